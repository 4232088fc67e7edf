"""The pipelines that chain stages, in one place: calibrate -> quantize (-> FP16) -> build (-> check).

Stages never call each other upward; whatever needs two of them lives here,
and the CLI, the demo and the scripts call these functions. `plugins` (the
built-in plugin ops, plus a user's: `trtptq.core.userfiles.load_plugins`) reaches
every stage that runs, quantizes, converts or builds the model.
"""

from __future__ import annotations

import logging
import math
import os
import pathlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace

import onnx
import onnx_graphsurgeon as gs

from trtptq.autotune.budget import Held, held
from trtptq.autotune.fallback import METRIC_TARGET, Fallback, fall_back
from trtptq.autotune.gated import GatedModel
from trtptq.autotune.method import choose_method
from trtptq.autotune.metric import task_metric
from trtptq.autotune.sensitivity import Sensitivity, SensitivityOptions, analyze
from trtptq.calibration.calibrate import AUTO, Calibration, CalibrationOptions, calibrate_tensors, state_as, state_ranges
from trtptq.calibration.channels import BlockGram, padding_mask
from trtptq.calibration.cluster import Cluster, connected, portable
from trtptq.calibration.collect import CollectStats
from trtptq.calibration.ranges import Ranges
from trtptq.calibration.state import CalibrationState, complete_state, model_identity
from trtptq.calibrators import METHODS, Calibrator
from trtptq.core import fileio
from trtptq.core import model as model_io
from trtptq.core.build_report import BuildReport
from trtptq.core.errors import TrtptqError
from trtptq.core.options import option_error
from trtptq.core.precision import NodePrecision
from trtptq.core.sidecars import fp16_model_path, int8_model_path
from trtptq.core.userfiles import SNR
from trtptq.data import Batches, Holdout, ImageOptions, input_specs, open_source
from trtptq.engine.build import build_engine
from trtptq.engine.calibration import passes_for
from trtptq.engine.options import BuildOptions
from trtptq.evaluation.compare import CompareOptions, CompareResult, check_metrics, compare
from trtptq.evaluation.evaluator import Evaluator
from trtptq.evaluation.report import calibration_histograms, write_report
from trtptq.plugins import BUILTIN, Plugins
from trtptq.quantization.graph import import_graph
from trtptq.quantization.insert import quantized_model
from trtptq.quantization.options import QuantizeOptions
from trtptq.quantization.qdq import Plan, fp8_inputs, int4_inputs, plan
from trtptq.quantization.rules import plugin_rules, with_rules
from trtptq.quantization.weights import Fp8Weights, Int4Weights

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
    """`quantize --target`: walk the most sensitive layers up the precision ladder until every metric reaches its
    minimum.

    Its ranking skips the gain measure by default (half the evaluations): the search orders by damage alone.
    """

    #: e.g. {"cosine": 0.99}, as compare --fail-below; "metric": the minimum of QuantizeOptions.metric (--metric)
    metrics: dict[str, float] = field(default_factory=dict)
    sensitivity: SensitivityOptions = field(default_factory=lambda: SensitivityOptions(gain=False))

    def __post_init__(self) -> None:
        if not self.metrics:
            raise TrtptqError("--target needs at least one METRIC=MIN, e.g. --target cosine=0.99")
        check_metrics("--target", {m: v for m, v in self.metrics.items() if m != METRIC_TARGET})
        if not math.isfinite(self.metrics.get(METRIC_TARGET, 0.0)):
            raise TrtptqError(f"--target metric={self.metrics[METRIC_TARGET]} is not a finite number; give the "
                              "minimum of --metric's score, e.g. --target metric=0.99.")


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
    ops by their rules): (model, name, graph, plan). For a model with external data, the models the run builds to
    measure share one copy of its quantized weights in a file beside the model's (`WeightFile`); the model it
    returns has its own (`_qdq_model`)."""
    options = options or QuantizeOptions()
    proto, name = _load(model)
    proto = model_io.ensure_opset(proto, options.opset)
    graph = import_graph(proto)
    placement = plan(graph, options, with_rules(plugin_rules(graph, plugins)))
    return proto, name, graph, replace(placement, weight_file=model_io.WeightFile.beside(proto))


def _from_json(cls, fields: dict):
    """An options dataclass from its dict as a JSON file holds it (lists back to tuples)."""
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()})


def _qopts_dict(q: QuantizeOptions) -> dict:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(q).items()}


def _calibrate(proto: onnx.ModelProto, name: str, graph: gs.Graph, placement: Plan, data, options: CalibrationOptions,
               qopts: QuantizeOptions, plugins: Plugins, identify: bool = False) -> tuple[Ranges, Calibration, Plan]:
    """Calibrate the plan's activations, fold from the same run the channel statistics of the inputs its INT4 and FP8
    weights may multiply (the plan returned rounds those weights with them), and choose the ranges (`_choose`)."""
    calibration = _collect(proto, name, graph, placement, data, options, qopts, plugins, identify)
    placement = _with_weight_statistics(graph, placement, qopts, calibration.state.channels)
    return _choose(proto, placement, calibration.state, calibration.batches, options, qopts, plugins), calibration, placement


def _collect(proto: onnx.ModelProto, name: str, graph: gs.Graph, placement: Plan, data, options: CalibrationOptions,
             qopts: QuantizeOptions, plugins: Plugins, identify: bool = False) -> Calibration:
    """The plan's activations and weight channel statistics (`_weight_channels`) over `data`; `identify`: the state names
    the model by its hash (for a state that will be saved and merged)."""
    return calibrate_tensors(proto, list(placement.activations), data, options, passes_for(options, build_engine), name,
                             plugins, {"quantize": _qopts_dict(qopts)}, model_identity(proto) if identify else "",
                             _weight_channels(proto, graph, placement, qopts))


def _weight_channels(proto: onnx.ModelProto, graph: gs.Graph, placement: Plan, qopts: QuantizeOptions
                     ) -> dict[str, BlockGram]:
    """Empty statistics of the inputs the plan's INT4 and FP8 weights may multiply, leaving out the rows
    --padding-mask marks as padding: INT4's as awq (blocks) or gptq (the whole second-moment matrix) reads them (none
    for rtn); FP8's per channel (blocks of 1), unless INT4's blocks hold them already."""
    int4 = set(int4_inputs(graph, placement, qopts).values()) if qopts.int4_method != "rtn" else set()
    fp8 = set(fp8_inputs(graph, placement, qopts).values()) - int4
    mask = padding_mask(proto, qopts.padding_mask) if int4 | fp8 else None
    size = None if qopts.int4_method == "gptq" else placement.block_size
    return {**{t: BlockGram(size, mask) for t in int4}, **{t: BlockGram(1, mask) for t in fp8}}


def _with_weight_statistics(graph: gs.Graph, placement: Plan, qopts: QuantizeOptions,
                            channels: dict[str, BlockGram]) -> Plan:
    """The plan rounding its INT4 and FP8 weights with the statistics in `channels` (a weight without them: INT4
    rtn, FP8 each channel's max onto 448)."""
    inputs = int4_inputs(graph, placement, qopts) if qopts.int4_method != "rtn" else {}
    grams = {w: channels[t].gram for w, t in inputs.items() if t in channels and channels[t].gram is not None}
    moments = {w: channels[t].moments for w, t in fp8_inputs(graph, placement, qopts).items()
               if t in channels and channels[t].moments is not None}
    return replace(placement, int4=Int4Weights(grams), fp8=Fp8Weights(moments))


def _weights_from_ranges(proto: onnx.ModelProto, graph: gs.Graph, placement: Plan, qopts: QuantizeOptions,
                         ranges: Ranges) -> Plan:
    """The plan rounding its INT4 and FP8 weights with the statistics the ranges carry (`calibrate`/`merge` write them
    beside the file). Refused where the ranges were calibrated for this --int4-method and lack INT4's; where they were
    calibrated otherwise, INT4 rtn with a warning. FP8 weights without theirs: each channel's max onto 448."""
    wanted = {t: g for t, g in _weight_channels(proto, graph, placement, qopts).items() if g.block_size != 1}
    if all(t in ranges.channels and (ranges.channels[t].block_size, ranges.channels[t].mask) == (g.block_size, g.mask)
           for t, g in wanted.items()):
        return _with_weight_statistics(graph, placement, qopts, ranges.channels)
    if ranges.options.get("quantize", {}).get("int4_method") == qopts.int4_method:
        raise TrtptqError(f"the ranges were calibrated with --int4-method {qopts.int4_method}, but its channel "
                          "statistics are not beside the ranges file (RANGES.int4.npz, which calibrate and merge write "
                          "with it); copy that file beside it, calibrate again, or give --int4-method rtn.")
    logger.warning("INT4 weights take the scales of least weight error (--int4-method rtn): %s needs channel "
                   "statistics, which ranges calibrated with other quantize options lack; calibrate with these "
                   "options (or give --data)", qopts.int4_method)
    return _with_weight_statistics(graph, placement, replace(qopts, int4_method="rtn"), ranges.channels)


def _choose(proto: onnx.ModelProto, placement: Plan, state: CalibrationState, batches: Batches,
            options: CalibrationOptions, qopts: QuantizeOptions, plugins: Plugins) -> Ranges:
    """The state's ranges; for method "auto", every method's ranges and their per-tensor mix are scored against
    FP32 on the first of `batches` and the best kept; for --precision auto, each layer's format is chosen as well
    (the ranges carry the choice, `with_auto_precisions` applies it)."""
    auto_precision = qopts.precision == AUTO and len(qopts.formats) > 1
    if state.method != AUTO and not auto_precision:
        return state.ranges()
    by_method = state.amax_by_method(options.percentile) if state.method == AUTO else {state.method: state.ranges().amax}
    if not state.calibrators or not _writes_activations(placement):  # weight-only (w4a16): no range to choose
        return state.ranges("minmax", by_method["minmax"]) if state.method == AUTO else state.ranges()
    metric = task_metric(qopts.metric)
    choice = choose_method(proto, placement, by_method, batches, options.auto_samples, options.memory_budget,
                           options.show_progress, plugins, qopts.formats if auto_precision else (), metric,
                           {t: c.amax for t, c in state.calibrators.items()})
    extra = {"auto_snr_db": choice.scores, "auto_kept": choice.kept, "auto_methods": choice.per_tensor}
    if auto_precision:
        extra |= {"auto_format_scores": choice.format_scores,
                  "auto_precisions": {node: asdict(p) for node, p in choice.precisions.items()}}
    best = max(db for db in (choice.scores[choice.method], *choice.format_scores.values()) if db is not None)
    if metric is None and best < LOW_SNR_DB:
        logger.warning("the best ranges (%s) leave the outputs %.1f dB from FP32 on %d calibration samples: check "
                       "task accuracy with --report --eval-data, and if it dropped, keep the most sensitive layers in "
                       "float with --target (e.g. --target cosine=0.995)", choice.method, best,
                       min(options.auto_samples, state.samples))
    return state.ranges(choice.method, choice.amax, extra)


def with_auto_precisions(placement: Plan, ranges: Ranges) -> Plan:
    """`placement` with the formats --precision auto chose (carried by `ranges`), if it chose any."""
    chosen = ranges.options.get("auto_precisions")
    return placement.with_precisions({n: NodePrecision(**p) for n, p in chosen.items()}) if chosen else placement


def _writes_activations(placement: Plan) -> bool:
    """Whether any consumer of the plan's activations reads them through Q/DQ (weight-only INT4 nodes do not)."""
    return any(placement.format_of(c).activations for consumers in placement.activations.values() for c in consumers)


def calibrate(model: onnx.ModelProto | str | os.PathLike, data, options: CalibrationOptions | None = None,
              quantize_options: QuantizeOptions | None = None, plugins: Plugins = BUILTIN,
              save_state: str | os.PathLike | None = None) -> Ranges:
    """Ranges for every tensor the quantizer will put Q/DQ on (chosen by `quantize_options`); `save_state`: also
    write the calibration state there (`merge` reads it)."""
    qopts = quantize_options or QuantizeOptions()
    proto, name, graph, placement = prepare(model, qopts, plugins)
    options = options or CalibrationOptions(method=qopts.range_method)
    ranges, calibration, _ = _calibrate(proto, name, graph, placement, data, options, qopts, plugins,
                                        identify=bool(save_state))
    if save_state:
        calibration.state.save(save_state)
    return ranges


def calibration_state(model: onnx.ModelProto | str | os.PathLike, data, options: CalibrationOptions | None = None,
                      quantize_options: QuantizeOptions | None = None, plugins: Plugins = BUILTIN) -> CalibrationState:
    """The calibrators' state after `options.shard`'s part of the data, no ranges chosen: save it, merge it."""
    qopts = quantize_options or QuantizeOptions()
    proto, name, graph, placement = prepare(model, qopts, plugins)
    options = options or CalibrationOptions(method=qopts.range_method)
    return _collect(proto, name, graph, placement, data, options, qopts, plugins, identify=True).state


def merge(states: Sequence[CalibrationState | str | os.PathLike], method: str | None = None,
          percentile: float | None = None, model: onnx.ModelProto | str | os.PathLike | None = None, data=None,
          options: CalibrationOptions | None = None, plugins: Plugins = BUILTIN,
          save_state: str | os.PathLike | None = None) -> Ranges:
    """The ranges of merged calibration states (files or objects), bit-identical to one `calibrate` over all
    their data, with their INT4 and FP8 channel statistics. `method` (default: the states'): any method from histograms;
    "auto", and any method of states calibrated with --precision auto, score the candidates on `model` and the first
    samples of `data` (all of it, as one calibration would), with `options`. `save_state`: also write the merged
    state there."""
    loaded = [s if isinstance(s, CalibrationState) else CalibrationState.load(s) for s in states]
    state = complete_state(loaded, [str(s) if not isinstance(s, CalibrationState) else f"state {k}"
                                    for k, s in enumerate(states)])
    if save_state:
        state.save(save_state)
    method = method or state.method
    qopts = _from_json(QuantizeOptions, state.options.get("quantize", {}))
    auto_precision = qopts.precision == AUTO and len(qopts.formats) > 1
    if (method != AUTO and not auto_precision) or ((model is None or data is None) and method == AUTO):
        return state_ranges(state, method, percentile)
    if model is None or data is None:
        raise TrtptqError("these states were calibrated with --precision auto, whose formats are chosen on the model: "
                          "give merge --model MODEL --data DATA (the calibration data, all of it).")
    if method == AUTO and state.method != AUTO:
        raise option_error("--method", AUTO, f"needs states calibrated with --method auto, not {state.method}",
                           "give --method entropy, percentile, mse or minmax, or calibrate the shards with --method auto")
    state = state_as(state, method, percentile) if method != AUTO else state if percentile is None else \
        replace(state, options={**state.options, "percentile": percentile})
    proto, _, graph, placement = prepare(model, qopts, plugins)
    if model_identity(proto) != state.model_id:
        raise TrtptqError(f"--model {model if not isinstance(model, onnx.ModelProto) else proto.graph.name} is not the "
                          f"model the states were calibrated on ({state.model}); give that model.")
    options = replace(options or CalibrationOptions(), method=method, num_bins=state.options.get("num_bins", 2048),
                      percentile=state.options.get("percentile", 99.99),
                      image=_from_json(ImageOptions, state.data["image"]))
    specs = input_specs(proto)
    batches = Batches(open_source(data, specs, options.image), specs, state.options["batch_size"],
                      state.data["num_samples"])
    placement = _with_weight_statistics(graph, placement, qopts, state.channels)
    return _choose(proto, placement, state, batches, options, qopts, plugins)


def quantize(model: onnx.ModelProto | str | os.PathLike, data=None, ranges: Ranges | str | os.PathLike | None = None,
             options: QuantizeOptions | None = None, calibration: CalibrationOptions | None = None,
             target: Target | None = None, plugins: Plugins = BUILTIN) -> QuantizeResult:
    """The explicit-INT8 (Q/DQ) model; ranges come from `ranges` or are calibrated on `data`.

    With `target`, the layers that hurt most stay in float until every target
    metric holds on the evaluation data (see `autotune.fallback`).
    """
    qopts = options or QuantizeOptions()
    if target is not None and METRIC_TARGET in target.metrics and qopts.metric == SNR:
        raise TrtptqError(f"--target metric={target.metrics[METRIC_TARGET]:g} needs --metric (argmax[:AXIS] or "
                          "FILE.py:FUNCTION): the score whose minimum it sets.")
    proto, name, graph, placement = prepare(model, qopts, plugins)
    eval_data = None
    calibration = calibration or CalibrationOptions(method=qopts.range_method)
    if target is not None:
        data, eval_data = _evaluation_split(proto, data, target, calibration.cluster)
    with connected(calibration.cluster):  # one Ray session for the calibration and the ranking
        ranges, placement, stats, calibs = _ranges_and_plan(proto, name, graph, placement, data, ranges, qopts,
                                                            calibration, plugins)
        if target is None:
            return QuantizeResult(_qdq_model(proto, placement, ranges), ranges, placement, stats, calibs)
        limits = _held(proto, placement, eval_data, target, calibration)
        limits = replace(limits, bytes=limits.bytes // 2)  # the search's evaluator and the ranking's, both open
        with Evaluator(proto, eval_data, batch_size=target.batch_size or limits.batch_size, num_samples=target.num_samples,
                       image=target.image, memory_budget=limits.bytes, show_progress=calibration.show_progress,
                       plugins=plugins) as evaluator:
            found, sensitivity = fall_back(
                proto, placement, ranges.amax, evaluator, target.metrics,
                lambda gated: _sensitivity(proto, placement, ranges, eval_data, target, name, limits, plugins, gated,
                                           calibration.cluster),
                [f.name for f in qopts.formats], calibration.show_progress, task_metric(qopts.metric),
                calibration.cluster)
        ranges = replace(ranges, options={**ranges.options, "fallback": found.to_dict()})
        return QuantizeResult(_qdq_model(proto, found.plan, ranges), ranges, found.plan, stats, calibs, found,
                              sensitivity)


def _ranges_and_plan(proto: onnx.ModelProto, name: str, graph: gs.Graph, placement: Plan, data,
                     ranges: Ranges | str | os.PathLike | None, qopts: QuantizeOptions, calibration: CalibrationOptions,
                     plugins: Plugins) -> tuple[Ranges, Plan, CollectStats | None, dict[str, Calibrator]]:
    """The ranges (given, or calibrated on `data`) and the plan they go with (its INT4 and FP8 statistics, the formats
    --precision auto chose): (ranges, plan, collection stats, calibrators)."""
    if ranges is not None:
        ranges = ranges if isinstance(ranges, Ranges) else Ranges.load(ranges)
        placement, stats, calibs = _weights_from_ranges(proto, graph, placement, qopts, ranges), None, {}
    elif data is not None:
        ranges, done, placement = _calibrate(proto, name, graph, placement, data, calibration, qopts, plugins)
        stats, calibs = done.stats, done.calibrators
    else:
        raise TrtptqError("quantize needs calibration data or a ranges file")
    if qopts.precision == AUTO:
        placement = with_auto_precisions(placement, ranges)
    return ranges, placement, stats, calibs


def _evaluation_split(proto: onnx.ModelProto, data, evaluation: EvaluationOptions,
                      cluster: Cluster | None = None) -> tuple[object, object]:
    """(calibration data, evaluation data): the evaluation's own, or 1 in HOLDOUT_EVERY samples held out; paths
    absolute with a `cluster` (`portable`: its workers read the evaluation data too)."""
    own = evaluation.data
    if cluster is not None:
        data, own = portable(data), portable(own)
    if own is not None or data is None:
        return data, own if own is not None else data
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
                 name: str, limits: Held, plugins: Plugins, gated: GatedModel | None = None,
                 cluster: Cluster | None = None) -> Sensitivity:
    """Rank the INT8 layers on the first `evaluation.sensitivity.samples` evaluation samples, within `limits` (the
    variants on `cluster`'s workers, if given)."""
    opts = evaluation.sensitivity
    with Evaluator(proto, eval_data, batch_size=evaluation.batch_size or limits.batch_size, num_samples=opts.samples,
                   image=evaluation.image, memory_budget=limits.bytes, plugins=plugins) as evaluator:
        return analyze(proto, placement, ranges.amax, evaluator, opts, pathlib.Path(name).name, gated, cluster)


def sensitivity(model: onnx.ModelProto | str | os.PathLike, data=None, ranges: Ranges | str | os.PathLike | None = None,
                options: QuantizeOptions | None = None, calibration: CalibrationOptions | None = None,
                evaluation: EvaluationOptions | None = None, plugins: Plugins = BUILTIN) -> tuple[Sensitivity, QuantizeResult]:
    """Quantize (from `data` or `ranges`), then rank every INT8 layer by the damage it does (`trtptq sensitivity`).

    The quantized model is built after the ranking, so that it is not held beside the ranking's sessions."""
    evaluation = evaluation or EvaluationOptions()
    qopts = options or QuantizeOptions()
    proto, name = _load(model)
    proto = model_io.ensure_opset(proto)
    calibration = calibration or CalibrationOptions(method=qopts.range_method)
    data, eval_data = _evaluation_split(proto, data, evaluation, calibration.cluster)
    if eval_data is None:
        raise TrtptqError("sensitivity needs data to measure on: --eval-data or --data")
    with connected(calibration.cluster):  # one Ray session for the calibration and the ranking
        proto, own_name, graph, placement = prepare(proto, qopts, plugins)
        ranges, placement, stats, calibs = _ranges_and_plan(proto, own_name, graph, placement, data, ranges, qopts,
                                                            calibration, plugins)
        limits = _held(proto, placement, eval_data, evaluation, calibration)
        ranked = _sensitivity(proto, placement, ranges, eval_data, evaluation, name, limits, plugins,
                              cluster=calibration.cluster)
        return ranked, QuantizeResult(_qdq_model(proto, placement, ranges), ranges, placement, stats, calibs)


def _qdq_model(proto: onnx.ModelProto, placement: Plan, ranges: Ranges) -> onnx.ModelProto:
    """The Q/DQ model for `ranges` (INT4 weights rounded as the plan says), with its precision plan, checked."""
    qdq = quantized_model(proto, replace(placement, weight_file=None), ranges.amax)  # its weights outlive the run's file
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
    proto, name, graph, placement = prepare(model, qopts, plugins)
    options = replace(calibration or CalibrationOptions(), method=AUTO)
    done = _collect(proto, name, graph, placement, data, options, qopts, plugins)
    placement = _with_weight_statistics(graph, placement, qopts, done.state.channels)
    by_method = done.amax_by_method()
    results = {}
    for method in methods:
        ranges = done.ranges(method, by_method[method])
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
