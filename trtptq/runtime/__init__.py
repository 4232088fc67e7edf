"""Running models: ONNX Runtime sessions, CUDA buffers and the TensorRT engine runner, behind one interface.

`load(path)` is the public entry for servers: an ONNX model or a TensorRT engine, the same model object;
`run_batches` runs one over a data source.
"""

from trtptq.runtime.base import Model, TensorInfo
from trtptq.runtime.loader import load
from trtptq.runtime.run import run_batches

__all__ = ["Model", "TensorInfo", "load", "run_batches"]
