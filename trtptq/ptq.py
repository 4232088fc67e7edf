"""The library API for steps 1-2: calibrate (-> Ranges) and quantize (-> Q/DQ model)."""

from __future__ import annotations

import os
import pathlib
from dataclasses import asdict, dataclass, field

import numpy as np
import onnx

from calibrators import CALIBRATORS, Calibrator, amax_by_method, make_calibrator

from . import model as model_io
from .collect import DEFAULT_MEMORY_BUDGET, CollectStats, collect
from .data import Batches, ImageOptions, input_specs, open_source
from .errors import TrtptqError
from .metrics import ErrorStats
from .qdq import Plan, QuantizeOptions, import_graph, insert_qdq, plan
from .ranges import Ranges, TensorRange
from .runtime_ort import session

AUTO = "auto"  # one histogram collection, every method's ranges tried, the one closest to FP32 kept


@dataclass
class CalibrationOptions:
    """How ranges are chosen and how the data is fed."""

    method: str = "entropy"  # minmax | percentile | entropy | mse | auto
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
    auto_samples: int = 256  # method="auto": calibration samples the candidates are scored on
    show_progress: bool = True

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
class QuantizeResult:
    model: onnx.ModelProto
    ranges: Ranges
    plan: Plan
    stats: CollectStats | None
    calibrators: dict[str, Calibrator] = field(default_factory=dict)  # empty when ranges were given


def _as_model(model: onnx.ModelProto | str | os.PathLike) -> tuple[onnx.ModelProto, str]:
    if isinstance(model, onnx.ModelProto):
        return model, model.graph.name
    return model_io.load(model), str(model)


def _prepare(model: onnx.ModelProto | str | os.PathLike, qopts: QuantizeOptions):
    """Load (opset >= 13), import once, and place Q/DQ: (model, name, graph, plan)."""
    proto, name = _as_model(model)
    proto = model_io.ensure_opset(proto)
    graph = import_graph(proto)
    return proto, name, graph, plan(graph, qopts)


def calibrate(model: onnx.ModelProto | str | os.PathLike, data, options: CalibrationOptions | None = None,
              quantize_options: QuantizeOptions | None = None) -> Ranges:
    """Ranges for every tensor the quantizer will put Q/DQ on (chosen by `quantize_options`)."""
    qopts = quantize_options or QuantizeOptions()
    proto, name, _, placement = _prepare(model, qopts)
    return _calibrate(proto, name, placement, data, options or CalibrationOptions(),
                      {"quantize": _qopts_dict(qopts)})[0]


def calibrate_tensors(model: onnx.ModelProto | str | os.PathLike, tensors, data,
                      options: CalibrationOptions | None = None) -> Ranges:
    """Ranges for the named tensors, wherever Q/DQ would go (e.g. every activation, for TensorRT <= 10's cache)."""
    proto, name = _as_model(model)
    return _calibrate(proto, name, list(tensors), data, options or CalibrationOptions(), {})[0]


def _calibrate(proto: onnx.ModelProto, name: str, target: Plan | list[str], data, options: CalibrationOptions,
               extra: dict) -> tuple[Ranges, CollectStats, dict[str, Calibrator]]:
    """Ranges for a Q/DQ plan's activations, or for a list of tensors (method "auto" needs the plan)."""
    tensors = list(target.activations) if isinstance(target, Plan) else target
    if options.method == AUTO and not isinstance(target, Plan):
        raise TrtptqError("--method auto chooses by quantizing the model with Q/DQ; pick a method here "
                          "(entropy, minmax, percentile or mse).")
    specs = input_specs(proto)
    batches = Batches(open_source(data, specs, options.image), specs, options.batch_size, options.num_samples)
    calibs = {t: make_calibrator("entropy", num_bins=options.num_bins) if options.method == AUTO else  # a histogram
              make_calibrator(options.method, **options.calibrator_options()) for t in tensors}
    stats = collect(proto, batches, calibs, options.memory_budget, options.nonfinite, options.providers,
                    options.show_progress, options.runner, options.backend) if calibs else CollectStats(0, 0, 0)
    method, opts = options.method, {**options.calibrator_options(), "batch_size": batches.batch_size, **extra}
    if method == AUTO:
        candidates = {t: amax_by_method(c.hist, options.percentile) for t, c in calibs.items()}
        by_method = {m: {t: a[m] for t, a in candidates.items()} for m in CALIBRATORS}
        scores = _score_methods(proto, target, by_method, batches, options.auto_samples) if calibs else {}
        method = max(scores, key=scores.get) if scores else "minmax"
        amax, opts["auto_snr_db"] = by_method[method], scores
    else:
        amax = {t: c.compute_amax() for t, c in calibs.items()}
    ranges = Ranges(
        method=method,
        options=opts,
        tensors={t: TensorRange(amax[t], c.minimum, c.maximum, c.count) for t, c in calibs.items()},
        model=pathlib.Path(name).name,
        num_samples=stats.samples,
        trt_algorithm=CALIBRATORS[method].trt_algorithm,
    )
    return ranges, stats, calibs


def _score_methods(proto: onnx.ModelProto, placement: Plan, by_method: dict[str, dict[str, float]],
                   batches: Batches, samples: int) -> dict[str, float]:
    """Each method's Q/DQ model scored by its mean output SNR (dB) against FP32 on the first `samples` samples.

    No labels needed: the FP32 model is the reference, as in `trtptq compare`.
    """
    feeds, seen = [], 0
    for batch in batches:
        feeds.append(batch.feed)
        seen += batch.size
        if seen >= samples:
            break
    reference = session(proto)
    expected = [reference.run(None, feed) for feed in feeds]
    scores = {}
    for method, amax in by_method.items():
        candidate = session(onnx_graph_export(insert_qdq(import_graph(proto), placement, amax), proto),
                            simulate_int8=True)
        stats = [ErrorStats() for _ in expected[0]]
        for feed, ref in zip(feeds, expected):
            for s, r, c in zip(stats, ref, candidate.run(None, feed)):
                s.update(r, c)
        scores[method] = round(float(np.mean([s.result()["snr_db"] for s in stats])), 3)
    return scores


def _qopts_dict(q: QuantizeOptions) -> dict:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(q).items()}


def quantize(model: onnx.ModelProto | str | os.PathLike, data=None, ranges: Ranges | str | os.PathLike | None = None,
             options: QuantizeOptions | None = None, calibration: CalibrationOptions | None = None) -> QuantizeResult:
    """The explicit-INT8 (Q/DQ) model; ranges come from `ranges` or are calibrated on `data`."""
    qopts = options or QuantizeOptions()
    proto, name, graph, placement = _prepare(model, qopts)
    stats, calibs = None, {}
    if ranges is not None:
        ranges = ranges if isinstance(ranges, Ranges) else Ranges.load(ranges)
    elif data is not None:
        ranges, stats, calibs = _calibrate(proto, name, placement, data, calibration or CalibrationOptions(),
                                           {"quantize": _qopts_dict(qopts)})
    else:
        raise ValueError("quantize needs calibration data or a ranges file")
    qdq = onnx_graph_export(insert_qdq(graph, placement, ranges.amax), proto)
    model_io.check(qdq, "the quantized model")
    return QuantizeResult(qdq, ranges, placement, stats, calibs)


def onnx_graph_export(graph, like: onnx.ModelProto) -> onnx.ModelProto:
    """Export a gs graph keeping the source model's metadata (producer, IR version, opsets)."""
    import onnx_graphsurgeon as gs

    out = gs.export_onnx(graph)
    out.ir_version = like.ir_version
    out.producer_name, out.producer_version = "trtptq", _version()
    del out.metadata_props[:]
    out.metadata_props.extend(like.metadata_props)
    return out


def _version() -> str:
    from . import __version__

    return __version__
