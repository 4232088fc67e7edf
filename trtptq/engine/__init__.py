"""Stage 3, engine: parse an ONNX model into a TensorRT network and build a serialized engine with its report."""
