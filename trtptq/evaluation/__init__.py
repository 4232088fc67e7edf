"""Measuring a candidate against the FP32 reference: the evaluator, metrics, comparison and the report."""
