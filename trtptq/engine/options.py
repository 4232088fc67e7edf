"""How to build an engine: the options a user gives, checked where they are made."""

from __future__ import annotations

from dataclasses import dataclass, field

from trtptq.calibration.calibrate import AUTO, CalibrationOptions
from trtptq.core.errors import TrtptqError
from trtptq.core.options import check_count, check_names, option_error
from trtptq.core.shapes import Profile


@dataclass
class ImplicitInt8:
    """TensorRT <= 10's implicit INT8 (no Q/DQ in the model): TensorRT calibrates during the build.

    entropy / minmax: TensorRT's own EntropyCalibration2 / MinMaxCalibration
    runs on `data`, fed through pycuda buffers. percentile / mse: trtptq
    calibrates every float activation (with `calibration.runner`) and TensorRT
    reads the ranges back as a cache. `cache`: read instead of calibrating
    when it exists, written after calibrating.
    """

    data: object = None
    calibration: CalibrationOptions = field(default_factory=CalibrationOptions)
    cache: str | None = None

    def __post_init__(self) -> None:
        if self.calibration.method == AUTO:
            raise TrtptqError("--method auto chooses by quantizing the model with Q/DQ; with --implicit-int8 pick "
                              "a method (entropy, minmax, percentile or mse).")


@dataclass
class BuildOptions:
    """How to build. Defaults: FP32 (or the Q/DQ model's INT8), TensorRT's own limits.

    TensorRT's log goes to Python logging ("trtptq.tensorrt"): its level there decides what shows.
    """

    backend: str | None = None  # tensorrt | tensorrt_rtx; None: auto
    fp16: bool = False
    keep_fp32: tuple[str, ...] = ()  # node names, globs or op types kept in FP32 under --fp16
    profiles: list[Profile] = field(default_factory=list)  # one per optimization profile
    workspace: int | None = None  # bytes
    optimization_level: int | None = None  # 0..5
    timing_cache: str | None = None  # loaded if it exists, saved after the build
    plugins: tuple[str, ...] = ()  # plugin libraries (.so)
    compute_capabilities: tuple[str, ...] = ()  # TensorRT-RTX targets, e.g. ("8.6", "8.9")
    tf32: bool = True  # False: FP32 layers compute in full FP32 (calibration engines, accuracy checks)
    mark_outputs: tuple[str, ...] = ()  # tensors to expose as extra engine outputs (calibration, debugging)
    implicit_int8: ImplicitInt8 | None = None  # TensorRT <= 10 only
    show_progress: bool = True

    def __post_init__(self) -> None:
        check_names("--keep-fp32", self.keep_fp32)
        check_names("--plugins", self.plugins)
        check_names("--compute-capability", self.compute_capabilities)
        check_count("--workspace", self.workspace, "byte")
        if self.optimization_level is not None and self.optimization_level not in range(6):
            raise option_error("--optimization-level", self.optimization_level, "is outside 0-5",
                               "use 0 (fastest build) to 5 (most tactics tried; TensorRT's default is 3)")
