"""Running models: ONNX Runtime sessions, CUDA buffers and the TensorRT engine runner, behind one interface.

`load(path)` is the public entry for servers: an ONNX model or a TensorRT engine, the same model object.
"""

from trtptq.runtime.model import Model, TensorInfo, load

__all__ = ["Model", "TensorInfo", "load"]
