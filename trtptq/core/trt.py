"""The one TensorRT seam: which TensorRT to use and what it supports. Nothing else imports TensorRT.

Auto order: `tensorrt` if importable, else `tensorrt_rtx` (TensorRT-RTX builds
engines ahead of time on a machine without a GPU). Override with the `backend`
argument, `--backend`, or TRTPTQ_BACKEND=tensorrt|tensorrt_rtx.
"""

from __future__ import annotations

import functools
import importlib
import os
from dataclasses import dataclass
from types import ModuleType

import numpy as np

from trtptq.core.errors import TrtptqError
from trtptq.core.trt_log import tensorrt_logger

BACKENDS = ("tensorrt", "tensorrt_rtx")
RUNNERS = ("onnxruntime", "tensorrt")  # what runs the FP32 model during calibration
ENV_VAR = "TRTPTQ_BACKEND"
OLDEST_TENSORRT = 10  # 8.6 shares a profile between contexts only with PreviewFeature.PROFILE_SHARING_0806
# TensorRT types that trt.nptype does not know, as ml_dtypes names them (installed with onnx).
# INT4 and FP4 hold two values per byte on the device; ml_dtypes holds one per byte.
_ML_DTYPES = {"BF16": "bfloat16", "FP8": "float8_e4m3fn", "INT4": "int4", "FP4": "float4_e2m1fn",
              "E8M0": "float8_e8m0fnu"}


@dataclass(frozen=True)
class Backend:
    name: str
    trt: ModuleType

    @property
    def version(self) -> str:
        return self.trt.__version__

    @property
    def major(self) -> int:
        return int(self.version.split(".")[0])

    @property
    def is_rtx(self) -> bool:
        return self.name == "tensorrt_rtx"

    @property
    def strongly_typed_only(self) -> bool:
        """TensorRT 11 and TensorRT-RTX take precision from the network's types alone."""
        return self.is_rtx or not hasattr(self.trt.BuilderFlag, "INT8")

    @property
    def has_implicit_int8(self) -> bool:
        """TensorRT <= 10: IInt8Calibrator classes and BuilderFlag.INT8 still exist."""
        return hasattr(self.trt, "IInt8EntropyCalibrator2") and hasattr(self.trt.BuilderFlag, "INT8")

    @property
    def has_compute_capabilities(self) -> bool:
        return hasattr(self.trt, "ComputeCapability")

    @property
    def cache_version(self) -> int:
        return cache_version(self.version)

    def logger(self):
        """The process's TensorRT logger for this module (`trtptq.core.trt_log`): messages go to Python logging."""
        return tensorrt_logger(self.trt)

    def numpy_dtype(self, dtype) -> np.dtype:
        """The numpy dtype of a TensorRT DataType, including those `trt.nptype` lacks (BF16, FP8, INT4, FP4, E8M0)."""
        name = dtype.name
        if name in _ML_DTYPES:
            import ml_dtypes

            return np.dtype(getattr(ml_dtypes, _ML_DTYPES[name]))
        try:
            return np.dtype(self.trt.nptype(dtype))
        except TypeError:
            raise TrtptqError(f"{self.name} {self.version} has a tensor type {name} that trtptq cannot hold in numpy; "
                              "mark that tensor's type as one of FLOAT, HALF, INT8, INT32, INT64, BOOL.") from None


def cache_version(version: str) -> int:
    """The number in a calibration cache header, TensorRT's NV_TENSORRT_VERSION (10.3.0 -> 100300, 8.6.1 -> 8601)."""
    try:
        major, minor, patch = (int(p) for p in (version.split(".") + ["0", "0"])[:3])
    except ValueError:
        raise TrtptqError(f"not a TensorRT version: {version!r} (e.g. 10.13.0)") from None
    return major * (10000 if major >= 10 else 1000) + minor * 100 + patch


def default_cache_version() -> int:
    """The installed TensorRT's cache version where it still reads calibration caches (<= 10), else 10.0.0's."""
    module = _import("tensorrt")
    if module is not None and Backend("tensorrt", module).has_implicit_int8:
        return cache_version(module.__version__)
    return cache_version("10.0.0")


@functools.cache
def _import(name: str) -> ModuleType | None:
    try:
        return importlib.import_module(name)
    except ImportError:
        return None



def installed_backends() -> dict[str, str]:
    """name -> version of every TensorRT module importable here."""
    return {n: m.__version__ for n in BACKENDS if (m := _import(n)) is not None}


def get_backend(name: str | None = None) -> Backend:
    """The TensorRT module to build with: `name`, else $TRTPTQ_BACKEND, else the first importable of BACKENDS."""
    name = name or os.environ.get(ENV_VAR) or None
    if name not in (None, *BACKENDS):
        raise TrtptqError(f"unknown TensorRT backend {name!r}; use one of {', '.join(BACKENDS)}")
    for candidate in [name] if name else BACKENDS:
        module = _import(candidate)
        if module is not None:
            backend = Backend(candidate, module)
            if not backend.is_rtx and backend.major < OLDEST_TENSORRT:
                raise TrtptqError(f"tensorrt {backend.version} is older than {OLDEST_TENSORRT}.0, which trtptq needs "
                                  "(execution contexts sharing a profile, name-based I/O); upgrade it: "
                                  f"pip install 'tensorrt>={OLDEST_TENSORRT}'.")
            return backend
    wanted = name or " or ".join(BACKENDS)
    raise TrtptqError(f"TensorRT is not installed ({wanted} cannot be imported). Install it with "
                      "pip install 'trtptq[rtx]' (TensorRT-RTX, builds on any machine) or 'trtptq[trt]'.")
