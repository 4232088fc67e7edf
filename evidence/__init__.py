"""Real pretrained models and real data that ship in PyPI and Debian packages, made ready for accuracy evidence.

Shared by the tests and the measuring scripts (`scripts/measure_*.py`, `scripts/bench_*.py`); not part of the
installed package. Each module names its sources and their licences.
"""
