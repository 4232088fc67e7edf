"""The pipelines that chain stages, in one place: calibrate -> quantize (-> FP16) -> build (-> check).

Stages never call each other upward; whatever needs two of them lives here,
and the CLI, the demo and the scripts call these functions. `plugins` (the
built-in plugin ops, plus a user's: `trtptq.core.userfiles.load_plugins`) reaches
every stage that runs, quantizes, converts or builds the model.
"""

from __future__ import annotations

import logging
import os
import pathlib
from dataclasses import asdict, dataclass, field, replace

import onnx

from trtptq.autotune.budget import Held, held
from trtptq.autotune.fallback import Fallback, fall_back
from trtptq.autotune.gated import GatedModel
from trtptq.autotune.method import choose_method
from trtptq.autotune.sensitivity import Sensitivity, SensitivityOptions, analyze
from trtptq.calibration.calibrate import AUTO, Calibration, CalibrationOptions, calibrate_tensors
from trtptq.calibration.collect import CollectStats
from trtptq.calibration.ranges import Ranges
from trtptq.calibrators import METHODS, Calibrator
from trtptq.core import fileio
from trtptq.core import model as model_io
from trtptq.core.build_report import BuildReport
from trtptq.core.errors import TrtptqError
from trtptq.core.sidecars import fp16_model_path, int8_model_path
from trtptq.data import Batches, Holdout, ImageOptions, input_specs, open_source
from trtptq.engine.build import build_engine
from trtptq.engine.calibration import passes_for
from trtptq.engine.options import BuildOptions
from trtptq.evaluation.compare import CompareOptions, CompareResult, check_metrics, compare
from trtptq.evaluation.evaluator import Evaluator
from trtptq.evaluation.report import calibration_histograms, write_report
from trtptq.plugins import BUILTIN, Plugins
from trtptq.quantization.graph import import_graph
from trtptq.quantization.qdq import Plan, QuantizeOptions, plan, quantized_model
from trtptq.quantization.rules import plugin_rules, with_rules

logger = logging.getLogger(__name__)
LOW_SNR_DB = 20.0  # output SNR (all outputs combined) below which --method auto tells the user to check accuracy (cosine ~0.995)
HOLDOUT_EVERY = 5  # without evaluation data, 1 calibration sample in 5 is held out to evaluate on


@dataclass
class Int8:
    """`build --int8`: calibrate on `data` (or read `ranges`) and insert Q/DQ before building."""

    data: object = None
    ranges: Ranges | str | os.PathLike | None = None
    options: QuantizeOptions = field(default_factory=QuantizeOptions)
    calibration: CalibrationOptions = field(default_factory=CalibrationOptions)
    onnx_output: str | os.PathLike | None = None  # where the Q/DQ model goes; default OUTPUT.int8.onnx

    def __post_init__(self) -> None:
        if self.data is None and self.ranges is None:
            raise TrtptqError("--int8 needs --data (to calibrate) or --ranges (from `trtptq calibrate`)")


@dataclass
class EvaluationOptions:
    """Where sensitivity and `--target` measure: evaluation data (None: held out from the calibration data)."""

    data: object = None
    batch_size: int | None = None  # None: the model's fixed batch, else what the calibration's pass held (autotune.budget)
    num_samples: int | None = None
    image: ImageOptions = field(default_factory=ImageOptions)
    sensitivity: SensitivityOptions = field(default_factory=SensitivityOptions)


@dataclass
class Target(EvaluationOptions):
    """`quantize --target`: keep the most sensitive layers in float until every metric reaches its minimum.

    Its ranking skips the gain measure by default (half the evaluations): the search orders by damage alone.
    """

    metrics: dict[str, float] = field(default_factory=dict)  # e.g. {"cosine": 0.99}, as compare --fail-below
    sensitivity: SensitivityOptions = field(default_factory=lambda: SensitivityOptions(gain=False))

    def __post_init__(self) -> None:
        if not self.metrics:
            raise TrtptqError("--target needs at least one METRIC=MIN, e.g. --target cosine=0.99")
        check_metrics("--target", self.metrics)


@dataclass
class QuantizeResult:
    model: onnx.ModelProto
    ranges: Ranges
    plan: Plan
    stats: CollectStats | None
    calibrators: dict[str, Calibrator] = field(default_factory=dict)  # empty when ranges were given
    fallback: Fallback | None = None  # with a target: what the search kept in float
    sensitivity: Sensitivity | None = None  # with a target the INT8 model missed: the ranking it searched


def _load(model: onnx.ModelProto | str | os.PathLike) -> tuple[onnx.ModelProto, str]:
    if isinstance(model, onnx.ModelProto):
        return model, model.graph.name
    return model_io.load(model), str(model)


def prepare(model: onnx.ModelProto | str | os.PathLike, options: QuantizeOptions | None = None,
            plugins: Plugins = BUILTIN):
    """Load (at the opset the formats need: 13 for INT8, 19 FP8, 21 INT4 blocks), import once and place Q/DQ (plugin
    ops by their rules): (model, name, graph, plan)."""
    options = options or QuantizeOptions()
    proto, name = _load(model)
    proto = model_io.ensure_opset(proto, options.opset)
    graph = import_graph(proto)
    return proto, name, graph, plan(graph, options, with_rules(plugin_rules(graph, plugins)))


def _qopts_dict(q: QuantizeOptions) -> dict:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(q).items()}


def _calibrate(proto: onnx.ModelProto, name: str, placement: Plan, data, options: CalibrationOptions,
               extra: dict, plugins: Plugins) -> tuple[Ranges, Calibration]:
    """Calibrate the plan's activations; for method "auto", every method's ranges and their per-tensor mix are
    scored against FP32 and the best kept."""
    calibration = calibrate_tensors(proto, list(placement.activations), data, options, passes_for(options, build_engine), name,
                                    plugins)
    if options.method != AUTO:
        return calibration.ranges(extra=extra), calibration
    by_method = calibration.amax_by_method()
    if not calibration.calibrators:
        return calibration.ranges("minmax", by_method["minmax"], extra), calibration
    choice = choose_method(proto, placement, by_method, calibration.batches, options.auto_samples,
                           options.memory_budget, options.show_progress, plugins)
    extra = {**extra, "auto_snr_db": choice.scores, "auto_methods": choice.per_tensor}
    if choice.scores[choice.method] < LOW_SNR_DB:
        logger.warning("the best INT8 ranges (%s) leave the outputs %.1f dB from FP32 on %d calibration samples: check "
                       "task accuracy with --report --eval-data, and if it dropped, keep the most sensitive layers in "
                       "float with --target (e.g. --target cosine=0.995)", choice.method, choice.scores[choice.method],
                       min(options.auto_samples, calibration.stats.samples))
    return calibration.ranges(choice.method, choice.amax, extra), calibration


def calibrate(model: onnx.ModelProto | str | os.PathLike, data, options: CalibrationOptions | None = None,
              quantize_options: QuantizeOptions | None = None, plugins: Plugins = BUILTIN) -> Ranges:
    """Ranges for every tensor the quantizer will put Q/DQ on (chosen by `quantize_options`)."""
    qopts = quantize_options or QuantizeOptions()
    proto, name, _, placement = prepare(model, qopts, plugins)
    options = options or CalibrationOptions(method=qopts.range_method)
    return _calibrate(proto, name, placement, data, options, {"quantize": _qopts_dict(qopts)},
                      plugins)[0]


def quantize(model: onnx.ModelProto | str | os.PathLike, data=None, ranges: Ranges | str | os.PathLike | None = None,
             options: QuantizeOptions | None = None, calibration: CalibrationOptions | None = None,
             target: Target | None = None, plugins: Plugins = BUILTIN) -> QuantizeResult:
    """The explicit-INT8 (Q/DQ) model; ranges come from `ranges` or are calibrated on `data`.

    With `target`, the layers that hurt most stay in float until every target
    metric holds on the evaluation data (see `autotune.fallback`).
    """
    qopts = options or QuantizeOptions()
    proto, name, _, placement = prepare(model, qopts, plugins)
    stats, calibs = None, {}
    eval_data = None
    calibration = calibration or CalibrationOptions(method=qopts.range_method)
    if target is not None:
        data, eval_data = _evaluation_split(proto, data, target)
    if ranges is not None:
        ranges = ranges if isinstance(ranges, Ranges) else Ranges.load(ranges)
    elif data is not None:
        ranges, done = _calibrate(proto, name, placement, data, calibration,
                                  {"quantize": _qopts_dict(qopts)}, plugins)
        stats, calibs = done.stats, done.calibrators
    else:
        raise TrtptqError("quantize needs calibration data or a ranges file")
    if target is None:
        return QuantizeResult(_qdq_model(proto, placement, ranges), ranges, placement, stats, calibs)
    limits = _held(proto, placement, eval_data, target, calibration)
    limits = replace(limits, bytes=limits.bytes // 2)  # the search's evaluator and the ranking's, both open
    with Evaluator(proto, eval_data, batch_size=target.batch_size or limits.batch_size, num_samples=target.num_samples,
                   image=target.image, memory_budget=limits.bytes, show_progress=calibration.show_progress,
                   plugins=plugins) as evaluator:
        found, sensitivity = fall_back(
            proto, placement, ranges.amax, evaluator, target.metrics,
            lambda gated: _sensitivity(proto, placement, ranges, eval_data, target, name, limits, plugins, gated),
            calibration.show_progress)
    ranges = replace(ranges, options={**ranges.options, "fallback": found.to_dict()})
    return QuantizeResult(_qdq_model(proto, found.plan, ranges), ranges, found.plan, stats, calibs, found, sensitivity)


def _evaluation_split(proto: onnx.ModelProto, data, evaluation: EvaluationOptions) -> tuple[object, object]:
    """(calibration data, evaluation data): the evaluation's own, or 1 in HOLDOUT_EVERY samples held out."""
    if evaluation.data is not None or data is None:
        return data, evaluation.data if evaluation.data is not None else data
    specs = input_specs(proto)
    source = open_source(data, specs, evaluation.image)
    logger.warning("no --eval-data: 1 in %d calibration samples is held out to evaluate on (not calibrated on)",
                   HOLDOUT_EVERY)
    return Holdout(source, specs, HOLDOUT_EVERY, held=False), Holdout(source, specs, HOLDOUT_EVERY, held=True)


def _held(proto: onnx.ModelProto, placement: Plan, eval_data, evaluation: EvaluationOptions,
          calibration: CalibrationOptions) -> Held:
    """What the search's runs on `eval_data` may hold: what a calibration pass of it holds (`autotune.budget`)."""
    specs = input_specs(proto)
    batches = Batches(open_source(eval_data, specs, evaluation.image), specs, calibration.batch_size)
    return held(proto, placement, batches, calibration.memory_budget)


def _sensitivity(proto: onnx.ModelProto, placement: Plan, ranges: Ranges, eval_data, evaluation: EvaluationOptions,
                 name: str, limits: Held, plugins: Plugins, gated: GatedModel | None = None) -> Sensitivity:
    """Rank the INT8 layers on the first `evaluation.sensitivity.samples` evaluation samples, within `limits`."""
    opts = evaluation.sensitivity
    with Evaluator(proto, eval_data, batch_size=evaluation.batch_size or limits.batch_size, num_samples=opts.samples,
                   image=evaluation.image, memory_budget=limits.bytes, plugins=plugins) as evaluator:
        return analyze(proto, placement, ranges.amax, evaluator, opts, pathlib.Path(name).name, gated)


def sensitivity(model: onnx.ModelProto | str | os.PathLike, data=None, ranges: Ranges | str | os.PathLike | None = None,
                options: QuantizeOptions | None = None, calibration: CalibrationOptions | None = None,
                evaluation: EvaluationOptions | None = None, plugins: Plugins = BUILTIN) -> tuple[Sensitivity, QuantizeResult]:
    """Quantize (from `data` or `ranges`), then rank every INT8 layer by the damage it does (`trtptq sensitivity`)."""
    evaluation = evaluation or EvaluationOptions()
    proto, name = _load(model)
    proto = model_io.ensure_opset(proto)
    data, eval_data = _evaluation_split(proto, data, evaluation)
    if eval_data is None:
        raise TrtptqError("sensitivity needs data to measure on: --eval-data or --data")
    calibration = calibration or CalibrationOptions(method=(options or QuantizeOptions()).range_method)
    result = quantize(proto, data, ranges, options, calibration, plugins=plugins)
    limits = _held(proto, result.plan, eval_data, evaluation, calibration)
    return _sensitivity(proto, result.plan, result.ranges, eval_data, evaluation, name, limits, plugins), result


def _qdq_model(proto: onnx.ModelProto, placement: Plan, ranges: Ranges) -> onnx.ModelProto:
    """The Q/DQ model for `ranges`, with its precision plan, checked."""
    qdq = quantized_model(proto, placement, ranges.amax)
    model_io.check(qdq, "the quantized model")
    return qdq


def quantize_each_method(model: onnx.ModelProto | str | os.PathLike, data, methods=METHODS,
                         options: QuantizeOptions | None = None,
                         calibration: CalibrationOptions | None = None,
                         plugins: Plugins = BUILTIN) -> dict[str, QuantizeResult]:
    """A Q/DQ model per range method from ONE histogram collection (what --method auto scores), side by side.

    Every result carries the histogram calibrators, so a report can draw each method's threshold on them.
    """
    qopts = options or QuantizeOptions()
    proto, name, _, placement = prepare(model, qopts, plugins)
    options = replace(calibration or CalibrationOptions(), method=AUTO)
    done = calibrate_tensors(proto, list(placement.activations), data, options, passes_for(options, build_engine), name, plugins)
    by_method = done.amax_by_method()
    results = {}
    for method in methods:
        ranges = done.ranges(method, by_method[method], {"quantize": _qopts_dict(qopts)})
        qdq = _qdq_model(proto, placement, ranges)
        results[method] = QuantizeResult(qdq, ranges, placement, done.stats, done.calibrators)
    return results


def report(reference: str | os.PathLike, candidate: str | os.PathLike, data, out_dir: str | os.PathLike,
           options: CompareOptions | None = None,
           calibrators: dict[str, Calibrator] | None = None,
           plugins: Plugins = BUILTIN) -> tuple[CompareResult, pathlib.Path]:
    """Compare a quantized model with its FP32 reference and write the report (its report.html is returned), with
    the calibration histograms of the layers that lose most when `calibrators` holds histograms."""
    result = compare(reference, [candidate], data, options, plugins)
    histograms = calibration_histograms(result.candidates[0], calibrators or {})
    return result, write_report(result, out_dir, histograms)


def build(model_path: str | os.PathLike, output: str | os.PathLike, options: BuildOptions | None = None,
          check_data=None, check_samples: int = 64, int8: Int8 | None = None,
          plugins: Plugins = BUILTIN) -> BuildReport:
    """Build an engine; for strongly typed TensorRT with `fp16`, convert the ONNX to FP16 first (quantize stage).

    With `int8`, the model is quantized first (OUTPUT.int8.onnx, or `int8.onnx_output`).
    The FP16 model is written beside the engine (OUTPUT.fp16.onnx). With
    `check_data`, it is compared with its FP32 source in ONNX Runtime and the
    result goes into the build report. `plugins`' TensorRT libraries are loaded
    for the build, and every plugin node is checked against TensorRT's registry first.
    """
    from trtptq.core.trt import get_backend

    opts = options or BuildOptions()
    backend = get_backend(opts.backend)
    output = pathlib.Path(output)
    fileio.check_writable(output)
    if int8 is not None:
        onnx_output = int8.onnx_output or int8_model_path(output)
        fileio.check_writable(onnx_output)
        result = quantize(model_path, int8.data, int8.ranges, int8.options, int8.calibration, plugins=plugins)
        model_path = model_io.save(result.model, onnx_output)
    source, check = pathlib.Path(model_path), None
    if opts.fp16 and backend.strongly_typed_only:
        from trtptq.quantization.fp16 import to_fp16

        converted = to_fp16(model_io.load(model_path), opts.keep_fp32, plugins=plugins)
        source = model_io.save(converted.model, fp16_model_path(output))
        if check_data is not None:
            from trtptq.evaluation.evaluator import Evaluator

            with Evaluator(model_path, check_data, num_samples=check_samples, plugins=plugins) as evaluator:
                check = {o: m.to_dict() for o, m in evaluator.evaluate(source).outputs.items()}
    report = build_engine(source, output, opts, plugins)  # the report reads the precision plan from `source`
    if source != pathlib.Path(model_path):
        report.fp16_check = check
        report.onnx_bytes = pathlib.Path(model_path).stat().st_size
        report.save()
    return report
