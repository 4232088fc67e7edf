"""trtptq: post-training INT8 quantization of ONNX models for TensorRT.

Heavy modules (onnxruntime, TensorRT, pycuda) load lazily, on first use, so
`import trtptq` works on a machine with none of them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

_EXPORTS = {
    "calibrate": "ptq", "quantize": "ptq", "CalibrationOptions": "ptq", "QuantizeResult": "ptq",
    "QuantizeOptions": "qdq", "Ranges": "ranges", "ImageOptions": "data", "Batches": "data",
    "TrtptqError": "errors",
}

if TYPE_CHECKING:
    from .data import Batches, ImageOptions
    from .errors import TrtptqError
    from .ptq import CalibrationOptions, QuantizeResult, calibrate, quantize
    from .qdq import QuantizeOptions
    from .ranges import Ranges


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module 'trtptq' has no attribute {name!r}")


__all__ = sorted(_EXPORTS)
