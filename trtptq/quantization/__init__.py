"""Stage 2, quantize: the precision plan (Q/DQ placement by per-op rules, FP16/FP32 fallback) and its insertion."""
