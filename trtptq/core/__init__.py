"""Shared ground for every stage: errors, atomic files, ONNX model I/O, shapes, the TensorRT seam and its log,
the build report beside every engine, logging."""
