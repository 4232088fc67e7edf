"""Running models: ONNX Runtime sessions, CUDA buffers and the TensorRT engine runner, behind one interface."""
