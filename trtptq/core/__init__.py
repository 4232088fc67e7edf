"""Shared ground for every stage: errors, atomic files, ONNX model I/O, the TensorRT seam, logging."""
