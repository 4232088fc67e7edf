"""Stage 1, calibrate: stream the FP32 model's tensors into calibrators and turn them into ranges."""
