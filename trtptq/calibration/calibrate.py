"""Calibration: options, and the ranges of a list of tensors from data (one collection, any method).

Which tensors to calibrate is the quantize stage's decision (its precision
plan); what runs the FP32 model is the caller's (ONNX Runtime by default, or
the `open_pass` of a TensorRT engine from the engine stage).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, replace

import onnx

from trtptq.calibration.channels import BlockGram
from trtptq.calibration.cluster import Cluster, map_merge, portable
from trtptq.calibration.collect import CollectStats, OpenPass, collect
from trtptq.calibration.ranges import Ranges
from trtptq.calibration.state import CalibrationState
from trtptq.calibrators import METHODS, Calibrator, HistogramCalibrator, make_calibrator
from trtptq.core.options import DEFAULT_MEMORY_BUDGET, check_choice, check_count, option_error
from trtptq.core.trt import RUNNERS
from trtptq.data import Batches, ImageOptions, Shard, input_specs, open_source
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
    shard: Shard = field(default_factory=Shard)  # the part of the data this run calibrates on (--shard K/N)
    cluster: Cluster | None = None  # calibrate on a Ray cluster, one task per shard (--workers, --ray-address)
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
        if self.cluster is not None and self.shard.count > 1:
            raise option_error("--shard", self.shard, "cannot be combined with a cluster (--workers, --ray-address)",
                               "give one of them: the cluster shards the data itself")

    def calibrator_options(self) -> dict:
        if self.method == AUTO:
            return {"num_bins": self.num_bins, "percentile": self.percentile}
        if self.method == "minmax":
            return {}
        opts: dict = {"num_bins": self.num_bins}
        if self.method == "percentile":
            opts["percentile"] = self.percentile
        return opts

    def data_options(self) -> dict:
        """What, beside the ranges file's options, decides which samples the calibrators see (shards aside)."""
        return {"num_samples": self.num_samples, "nonfinite": self.nonfinite, "image": asdict(self.image)}


@dataclass
class Calibration:
    """What one collection produced: its state (the calibrators), and the batches it read."""

    state: CalibrationState
    stats: CollectStats
    batches: Batches
    options: CalibrationOptions

    @property
    def calibrators(self) -> dict[str, Calibrator]:
        return self.state.calibrators

    def amax_by_method(self) -> dict[str, dict[str, float]]:
        """method -> tensor -> amax, all read from the histograms of one collection (method "auto")."""
        return self.state.amax_by_method(self.options.percentile)

    def ranges(self, method: str | None = None, amax: dict[str, float] | None = None, extra: dict | None = None) -> Ranges:
        """The ranges file for `method` (default: the calibrated one), from `amax` or the calibrators."""
        return self.state.ranges(method, amax, extra)


def calibrate_tensors(model: onnx.ModelProto, tensors, data, options: CalibrationOptions | None = None,
                      passes: Passes | None = None, model_name: str = "", plugins: Plugins = BUILTIN,
                      ranges_options: dict | None = None, model_id: str = "",
                      channels: Mapping[str, BlockGram] | None = None) -> Calibration:
    """Run the FP32 `model` over `data` (the options' shard of it) and fold each named tensor into its calibrator.

    Method "auto" collects one histogram per tensor, from which every method's
    threshold is read; choosing among them is the quantize stage's job. Plugin
    nodes run in ONNX Runtime through `plugins` (a TensorRT runner has them in its engine).
    `ranges_options`: what the ranges file records beside the calibration options (the quantize options);
    `model_id`: the model's identity in the state (`state.model_identity`), where the state will be saved.
    `channels` (tensor -> statistics, a subset of `tensors`) are folded from the same values, in place; the state
    holds them.
    """
    options = options or CalibrationOptions()
    if options.cluster is not None:
        return _on_cluster(model, tensors, data, options, passes, model_name, plugins, ranges_options, model_id,
                           channels or {})
    specs = input_specs(model)
    batches = Batches(open_source(data, specs, options.image), specs, options.batch_size, options.num_samples,
                      options.shard)
    calibs = {t: make_calibrator("entropy", num_bins=options.num_bins) if options.method == AUTO else  # a histogram
              make_calibrator(options.method, **options.calibrator_options()) for t in tensors}
    stats = CollectStats(0, 0, 0)
    if calibs:
        with (passes(model, batches) if passes else contextlib.nullcontext(None)) as open_pass:
            stats = collect(model, batches, calibs, options.memory_budget, options.nonfinite, options.providers,
                            options.show_progress, open_pass, plugins, channels)
    state = CalibrationState(
        model=model_name or model.graph.name, model_id=model_id, method=options.method,
        options={**options.calibrator_options(), "batch_size": batches.batch_size, **(ranges_options or {})},
        data=options.data_options(), calibrators=calibs, samples=stats.samples,
        shards=(options.shard.index,), num_shards=options.shard.count, channels=dict(channels or {}))
    return Calibration(state, stats, batches, options)


def _on_cluster(model: onnx.ModelProto, tensors, data, options: CalibrationOptions, passes: Passes | None,
                model_name: str, plugins: Plugins, ranges_options: dict | None, model_id: str,
                channels: Mapping[str, BlockGram]) -> Calibration:
    """`calibrate_tensors` with one Ray task per shard; the merged state is that of one process over all the data,
    and `channels` get every shard's statistics (summed in shard order, as the state merges them)."""
    shared = (model, list(tensors), portable(data), passes, model_name or model.graph.name, plugins, ranges_options,
              model_id, {t: BlockGram(g.block_size, g.mask) for t, g in channels.items()})
    state, stats = map_merge(options.cluster, _calibrate_shard, shared,
                             lambda k, n: (replace(options, cluster=None, shard=Shard(k, n), show_progress=False),),
                             _merge_shards, gpus=1 if options.runner == "tensorrt" else 0)  # an engine per GPU
    for t, gram in state.channels.items():
        channels[t].add(gram)
    specs = input_specs(model)
    batches = Batches(open_source(data, specs, options.image), specs, options.batch_size, options.num_samples)
    return Calibration(replace(state, channels=dict(channels)), stats, batches, options)


_ShardResult = tuple[CalibrationState, CollectStats]  # what one shard's task gives back


def _calibrate_shard(model: onnx.ModelProto, tensors: list[str], data, passes: Passes | None, model_name: str,
                     plugins: Plugins, ranges_options: dict | None, model_id: str, channels: dict[str, BlockGram],
                     options: CalibrationOptions) -> _ShardResult:
    """One task: calibrate one shard (`options.shard`), reading it where the task runs."""
    done = calibrate_tensors(model, tensors, data, options, passes, model_name, plugins, ranges_options, model_id,
                             channels)
    return done.state, done.stats


def _merge_shards(a: _ShardResult, b: _ShardResult) -> _ShardResult:
    return a[0].merge(b[0]), CollectStats(max(a[1].passes, b[1].passes), a[1].batches + b[1].batches,
                                          a[1].samples + b[1].samples)


def state_ranges(state: CalibrationState, method: str | None = None, percentile: float | None = None) -> Ranges:
    """The ranges `calibrate --method method [--percentile p]` writes for the state's data, file bytes alike."""
    return state_as(state, method, percentile).ranges()


def state_as(state: CalibrationState, method: str | None = None, percentile: float | None = None) -> CalibrationState:
    """The state `calibrate --method method [--percentile p]` would have reached on the state's data.

    Histograms (a state of method auto, entropy, percentile or mse) give every method; extremes (minmax) only
    minmax. Method "auto" scores candidates on the model, so it is the pipelines' (`pipelines.merge`).
    """
    method = method or state.method
    percentile = state.options.get("percentile", 99.99) if percentile is None else percentile
    options = CalibrationOptions(method=method, num_bins=state.options.get("num_bins", 2048), percentile=percentile)
    histograms = all(isinstance(c, HistogramCalibrator) for c in state.calibrators.values())
    if method == AUTO or not (histograms or method == "minmax"):
        raise option_error("--method", method, f"cannot be read from states of method {state.method}",
                           "give --method " + ("entropy, percentile, mse or minmax, or --model and --data to score "
                                               "them (auto)" if histograms else "minmax, or calibrate with --method "
                                                                                "auto (histograms: every method)"))
    own = {k: v for k, v in options.calibrator_options().items() if k != "num_bins"}
    calibrators = {t: Calibrator.from_state({**c.state(), "method": method, "options": own})
                   for t, c in state.calibrators.items()}
    rest = {k: v for k, v in state.options.items() if k not in ("num_bins", "percentile")}
    return replace(state, method=method, options={**options.calibrator_options(), **rest}, calibrators=calibrators)
