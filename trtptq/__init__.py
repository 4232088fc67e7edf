"""trtptq: post-training INT8 quantization of ONNX models for TensorRT.

The package is the library facade: the names below cover the whole flow
(calibrate -> quantize -> build -> compare). Heavy modules (onnxruntime,
TensorRT, pycuda) load lazily, on first use, so `import trtptq` works on a
machine with none of them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from trtptq.core.version import __version__

_EXPORTS = {
    "calibrate": "trtptq.pipelines", "quantize": "trtptq.pipelines", "build": "trtptq.pipelines",
    "QuantizeResult": "trtptq.pipelines", "sensitivity": "trtptq.pipelines", "Target": "trtptq.pipelines",
    "merge": "trtptq.pipelines",
    "EvaluationOptions": "trtptq.pipelines", "SensitivityOptions": "trtptq.autotune.sensitivity",
    "compare": "trtptq.evaluation.compare", "CompareOptions": "trtptq.evaluation.compare",
    "Evaluator": "trtptq.evaluation.evaluator",
    "write_report": "trtptq.evaluation.report",
    "CalibrationOptions": "trtptq.calibration.calibrate", "Ranges": "trtptq.calibration.ranges",
    "QuantizeOptions": "trtptq.quantization.options",
    "BuildOptions": "trtptq.engine.options", "parse_shapes": "trtptq.core.shapes",
    "BuildReport": "trtptq.core.build_report",
    "ImageOptions": "trtptq.data", "Batches": "trtptq.data",
    "save_model": "trtptq.core.model", "load_model": "trtptq.core.model",
    "TrtptqError": "trtptq.core.errors",
}

if TYPE_CHECKING:
    from trtptq.autotune.sensitivity import SensitivityOptions
    from trtptq.calibration.calibrate import CalibrationOptions
    from trtptq.calibration.ranges import Ranges
    from trtptq.core.build_report import BuildReport
    from trtptq.core.errors import TrtptqError
    from trtptq.core.model import load as load_model
    from trtptq.core.model import save as save_model
    from trtptq.core.shapes import parse_shapes
    from trtptq.data import Batches, ImageOptions
    from trtptq.engine.options import BuildOptions
    from trtptq.evaluation.compare import CompareOptions, compare
    from trtptq.evaluation.evaluator import Evaluator
    from trtptq.evaluation.report import write_report
    from trtptq.pipelines import EvaluationOptions, QuantizeResult, Target, build, calibrate, merge, quantize, sensitivity
    from trtptq.quantization.options import QuantizeOptions

_RENAMED = {"save_model": "save", "load_model": "load"}


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), _RENAMED.get(name, name))
    raise AttributeError(f"module 'trtptq' has no attribute {name!r}")


__all__ = sorted(_EXPORTS)
