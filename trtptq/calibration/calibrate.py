"""Calibration: options, and the ranges of a list of tensors from data (one collection, any method).

Which tensors to calibrate is the quantize stage's decision (its precision
plan); what runs the FP32 model is the caller's (ONNX Runtime by default, or
the `open_pass` of a TensorRT engine from the engine stage).
"""

from __future__ import annotations

import contextlib
import pathlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import onnx

from trtptq.calibration.channels import BlockGram
from trtptq.calibration.collect import CollectStats, OpenPass, collect
from trtptq.calibration.ranges import Ranges, TensorRange
from trtptq.calibrators import CALIBRATORS, METHODS, Calibrator, amax_by_method, make_calibrator
from trtptq.core.options import DEFAULT_MEMORY_BUDGET, check_choice, check_count, option_error
from trtptq.core.trt import RUNNERS
from trtptq.data import Batches, ImageOptions, input_specs, open_source
from trtptq.plugins import BUILTIN, Plugins

#: (FP32 model, batches) -> a context giving the OpenPass that runs it; default: ONNX Runtime.
Passes = Callable[[onnx.ModelProto, Batches], contextlib.AbstractContextManager[OpenPass]]
AUTO = "auto"  # one histogram collection, every method's ranges tried, the one closest to FP32 kept
# Histogram bins: below 256, at most 128 bins are filled (the maximum lands in the upper half), so entropy's KL search
# over 128 quantized levels has no threshold under the maximum and silently becomes minmax (ONNX Runtime's trap).
# Above 16384, the MSE search (O(bins^2)) takes seconds per tensor and the entropy search hundreds of MB, for nothing.
MIN_NUM_BINS, MAX_NUM_BINS = 256, 16384


@dataclass
class CalibrationOptions:
    """How ranges are chosen and how the data is fed."""

    method: str = AUTO  # minmax | percentile | entropy | mse | auto (the safe default: never the worst method)
    percentile: float = 99.99
    num_bins: int = 2048
    batch_size: int | None = None  # None: 1, or the model's fixed batch
    num_samples: int | None = None  # cap on samples used
    memory_budget: int = DEFAULT_MEMORY_BUDGET  # bytes of activations held per pass
    nonfinite: str = "error"  # or "ignore"
    image: ImageOptions = field(default_factory=ImageOptions)
    providers: tuple[str, ...] | None = None  # ONNX Runtime's, for runner="onnxruntime"
    runner: str = "onnxruntime"  # or "tensorrt": an FP32 engine on the GPU, through pycuda buffers
    backend: str | None = None  # the TensorRT for runner="tensorrt" (None: auto)
    auto_samples: int = 16  # method="auto": calibration samples the candidates are scored on
    show_progress: bool = True

    def __post_init__(self) -> None:
        """Every value checked here, so a bad one stops the CLI and the API before any data is read."""
        check_choice("--method", self.method, (*METHODS, AUTO))
        if not 0 < self.percentile <= 100:
            raise option_error("--percentile", self.percentile, "is outside (0, 100]",
                               "give the share of |x| to keep unclipped, e.g. --percentile 99.99 (100: the maximum)")
        bins = self.num_bins
        if not (MIN_NUM_BINS <= bins <= MAX_NUM_BINS and bins & (bins - 1) == 0):
            raise option_error("--num-bins", bins, f"is not a power of two from {MIN_NUM_BINS} to {MAX_NUM_BINS}",
                               f"use e.g. --num-bins 2048 (TensorRT's); under {MIN_NUM_BINS} entropy's search over 128 "
                               "levels finds no threshold below the maximum")
        check_count("--batch-size", self.batch_size, "sample per batch")
        check_count("--num-samples", self.num_samples, "sample")
        if self.memory_budget < 1:
            raise option_error("--memory-budget", self.memory_budget, "is not a positive size",
                               "give the activation memory one pass may hold, e.g. --memory-budget 2G")
        check_choice("--nonfinite", self.nonfinite, ("error", "ignore"))
        check_choice("--runner", self.runner, RUNNERS)
        check_count("auto_samples", self.auto_samples, "sample to score --method auto on")

    def calibrator_options(self) -> dict:
        if self.method == AUTO:
            return {"num_bins": self.num_bins, "percentile": self.percentile}
        if self.method == "minmax":
            return {}
        opts: dict = {"num_bins": self.num_bins}
        if self.method == "percentile":
            opts["percentile"] = self.percentile
        return opts


@dataclass
class Calibration:
    """What one collection produced: the calibrators, and for method "auto" every method's ranges."""

    calibrators: dict[str, Calibrator]
    stats: CollectStats
    batches: Batches
    options: CalibrationOptions
    model_name: str

    def amax_by_method(self) -> dict[str, dict[str, float]]:
        """method -> tensor -> amax, all read from the histograms of one collection (method "auto")."""
        per_tensor = {t: amax_by_method(c.hist, self.options.percentile) for t, c in self.calibrators.items()}
        return {m: {t: a[m] for t, a in per_tensor.items()} for m in CALIBRATORS}

    def ranges(self, method: str | None = None, amax: dict[str, float] | None = None, extra: dict | None = None) -> Ranges:
        """The ranges file for `method` (default: the calibrated one), from `amax` or the calibrators."""
        method = method or self.options.method
        if amax is None:
            amax = {t: c.compute_amax() for t, c in self.calibrators.items()}
        opts = {**self.options.calibrator_options(), "batch_size": self.batches.batch_size, **(extra or {})}
        return Ranges(
            method=method,
            options=opts,
            tensors={t: TensorRange(amax[t], c.minimum, c.maximum, c.count) for t, c in self.calibrators.items()},
            model=pathlib.Path(self.model_name).name,
            num_samples=self.stats.samples,
            trt_algorithm=CALIBRATORS[method].trt_algorithm if method in CALIBRATORS else CALIBRATORS["entropy"].trt_algorithm,
        )


def calibrate_tensors(model: onnx.ModelProto, tensors, data, options: CalibrationOptions | None = None,
                      passes: Passes | None = None, model_name: str = "", plugins: Plugins = BUILTIN,
                      channels: Mapping[str, BlockGram] | None = None) -> Calibration:
    """Run the FP32 `model` over `data` and fold each named tensor into its calibrator.

    Method "auto" collects one histogram per tensor, from which every method's
    threshold is read; choosing among them is the quantize stage's job. Plugin
    nodes run in ONNX Runtime through `plugins` (a TensorRT runner has them in its engine). `channels` (tensor ->
    statistics, a subset of `tensors`) are folded from the same values, in place.
    """
    options = options or CalibrationOptions()
    specs = input_specs(model)
    batches = Batches(open_source(data, specs, options.image), specs, options.batch_size, options.num_samples)
    calibs = {t: make_calibrator("entropy", num_bins=options.num_bins) if options.method == AUTO else  # a histogram
              make_calibrator(options.method, **options.calibrator_options()) for t in tensors}
    if not calibs:
        return Calibration(calibs, CollectStats(0, 0, 0), batches, options, model_name or model.graph.name)
    with (passes(model, batches) if passes else contextlib.nullcontext(None)) as open_pass:
        stats = collect(model, batches, calibs, options.memory_budget, options.nonfinite, options.providers,
                        options.show_progress, open_pass, plugins, channels)
    return Calibration(calibs, stats, batches, options, model_name or model.graph.name)
