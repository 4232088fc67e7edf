"""Step 4: compare candidates (Q/DQ or FP16 ONNX, or engines) with the FP32 reference.

Outputs: one `Evaluator` runs the reference once and measures every candidate
against it in real batches; `--atol/--rtol` is Polygraphy's Comparator
(`compare_accuracy` with `SimpleCompareFunc`) on the same outputs, batch by
batch. Per layer (ONNX candidates): the tensors a candidate shares with the
reference are exposed and compared batch by batch, every candidate in the same
pass so the reference runs once per pass, which shows where the error starts
and where it grows; a graph input the candidate quantizes gets its own row.
"""

from __future__ import annotations

import contextlib
import math
import os
import pathlib
from dataclasses import asdict, dataclass, field

import numpy as np
import onnx

from trtptq.calibration.passes import plan_passes, with_outputs
from trtptq.core import model as model_io
from trtptq.core.errors import TrtptqError
from trtptq.core.formats import INT8
from trtptq.core.log import progress
from trtptq.core.options import DEFAULT_MEMORY_BUDGET, check_count, option_error
from trtptq.data import ImageOptions
from trtptq.evaluation.evaluator import Evaluator, TaskAccuracy
from trtptq.evaluation.metrics import EXACT_SNR_DB, ErrorStats, OutputMetrics
from trtptq.plugins import BUILTIN, Plugins
from trtptq.runtime.ort import OrtRunner

CHECKABLE = ("cosine", "snr_db", "top1_agreement", "top5_agreement", "accuracy")
FRACTIONS = ("top1_agreement", "top5_agreement", "accuracy")  # shares of samples, from 0 to 1
EXAMPLES = {"cosine": 0.999, "snr_db": 20, "top1_agreement": 0.99, "top5_agreement": 0.999, "accuracy": 0.98}
QDQ_INPUT_OP = "QuantizeLinear+DequantizeLinear"  # the op of a per-layer row for a quantized graph input
TASK = "(task)"  # the output a task-accuracy check names


@dataclass
class CompareOptions:
    batch_size: int | None = None  # None: the model's fixed batch dimension, else 64 (evaluator.DEFAULT_BATCH_SIZE)
    num_samples: int | None = None
    per_layer: bool = True
    fail_below: dict[str, float] = field(default_factory=dict)  # metric -> minimum, e.g. {"cosine": 0.999}
    atol: float | None = None  # Polygraphy's elementwise check, with rtol
    rtol: float | None = None
    memory_budget: int = DEFAULT_MEMORY_BUDGET  # bytes of activations per per-layer pass
    image: ImageOptions = field(default_factory=ImageOptions)
    show_progress: bool = True

    def __post_init__(self) -> None:
        check_count("--batch-size", self.batch_size, "sample per batch")
        check_count("--num-samples", self.num_samples, "sample")
        check_metrics("--fail-below", self.fail_below)
        for flag, tolerance in (("--atol", self.atol), ("--rtol", self.rtol)):
            if tolerance is not None and not (math.isfinite(tolerance) and tolerance >= 0):
                raise option_error(flag, tolerance, "is not a tolerance", f"give a finite number >= 0, e.g. {flag} 1e-3")

    @property
    def has_tolerances(self) -> bool:
        return self.atol is not None or self.rtol is not None

    @property
    def has_checks(self) -> bool:
        return bool(self.fail_below) or self.has_tolerances


@dataclass(frozen=True)
class ThresholdCheck:
    """One `--fail-below` / `--target` check: a metric of one output (or TASK) against its minimum."""

    metric: str
    output: str
    value: float
    threshold: float

    @property
    def passed(self) -> bool:
        return self.value >= self.threshold

    def to_dict(self) -> dict:
        return {**asdict(self), "passed": self.passed}


@dataclass
class LayerRow:
    tensor: str
    node: str  # the node's name; an unnamed node is called OP(first output), e.g. Conv(conv_out)
    op: str
    snr_db: float  # EXACT_SNR_DB: the tensor matches the reference exactly
    cosine: float
    max_abs_error: float
    db_lost: float  # SNR this node loses relative to its worst compared input (positive: a loss; see _rows)
    inputs: list[str] = field(default_factory=list)  # the node's inputs in the reference graph

    @property
    def exact(self) -> bool:
        return self.snr_db >= EXACT_SNR_DB


@dataclass
class CandidateResult:
    name: str
    path: str
    outputs: dict[str, OutputMetrics]
    layers: list[LayerRow]
    accuracy: TaskAccuracy | None
    checks: list[ThresholdCheck]
    polygraphy_passed: bool | None
    passed: bool | None  # None: no checks were requested
    error_samples: dict[str, np.ndarray] = field(default_factory=dict, repr=False)

    @property
    def error_source(self) -> LayerRow | None:
        return max(self.layers, key=lambda r: r.db_lost) if self.layers else None

    def to_dict(self) -> dict:
        """As report.json holds it (no error samples)."""
        src = self.error_source
        return {"name": self.name, "path": self.path, "passed": self.passed,
                "outputs": {o: m.to_dict() for o, m in self.outputs.items()},
                "accuracy": self.accuracy and self.accuracy.to_dict(), "checks": [k.to_dict() for k in self.checks],
                "polygraphy_passed": self.polygraphy_passed, "error_source": src and asdict(src),
                "worst_layers": [asdict(r) for r in sorted(self.layers, key=lambda r: r.snr_db)[:5]],
                "layers": [asdict(r) for r in self.layers]}


@dataclass
class CompareResult:
    reference: str
    candidates: list[CandidateResult]
    num_samples: int

    @property
    def passed(self) -> bool | None:
        """True when checks were requested and all passed, False when one failed, None when none were requested."""
        verdicts = [c.passed for c in self.candidates if c.passed is not None]
        return all(verdicts) if verdicts else None

    def to_dict(self) -> dict:
        """report.json's content."""
        return {"reference": self.reference, "num_samples": self.num_samples, "passed": self.passed,
                "candidates": [c.to_dict() for c in self.candidates]}


def parse_thresholds(items: list[str], flag: str = "--fail-below") -> dict[str, float]:
    """['cosine=0.999', 'snr_db=20'] -> dict, with the metric names and their ranges checked."""
    out = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or name not in CHECKABLE:
            raise TrtptqError(f"bad {flag} {item!r}: use METRIC=VALUE with METRIC one of {', '.join(CHECKABLE)}")
        try:
            out[name] = float(value)
        except ValueError:
            raise TrtptqError(f"bad {flag} {item!r}: {value!r} is not a number") from None
    check_metrics(flag, out)
    return out


def check_metrics(flag: str, minimums: dict[str, float]) -> None:
    """Each minimum names a checkable metric and lies in its range: a cosine above 1 can never be met, and an
    accuracy of 99 is a percentage where a fraction was meant."""
    for name, value in minimums.items():
        item = f"{name}={value:g}"
        if name not in CHECKABLE:
            raise option_error(flag, item, "names no metric", f"use one of {', '.join(CHECKABLE)}")
        example = f"e.g. {flag} {name}={EXAMPLES[name]:g}"
        if not math.isfinite(value):
            raise option_error(flag, item, "is not a finite number", f"give the minimum {name}, {example}")
        if name == "cosine" and not -1 <= value <= 1:
            raise option_error(flag, item, "is outside [-1, 1], the range of a cosine similarity",
                               f"give the minimum cosine, {example}")
        if name in FRACTIONS and not 0 <= value <= 1:
            fix = (f"{name} is a fraction from 0 to 1, not a percentage: {value:g}% is {flag} {name}={value / 100:g}"
                   if 1 < value <= 100 else f"{name} is a fraction from 0 to 1, {example}")
            raise option_error(flag, item, "is outside [0, 1]", fix)
        if name == "snr_db" and value > EXACT_SNR_DB:
            raise option_error(flag, item, f"is above {EXACT_SNR_DB:g} dB, where outputs equal to FP32 up to float32 "
                                           "rounding count as exact", f"give at most {flag} snr_db={EXACT_SNR_DB:g}")


def compare(reference: str | os.PathLike, candidates: list[str | os.PathLike], data,
            options: CompareOptions | None = None, plugins: Plugins = BUILTIN) -> CompareResult:
    """Compare every candidate with the FP32 reference on `data` (same sources as calibration); plugin nodes
    run in ONNX Runtime through `plugins`."""
    opts = options or CompareOptions()
    ref_model = model_io.load(reference)
    loaded = [(pathlib.Path(p), _load_candidate(pathlib.Path(p))) for p in candidates]  # fail before any run
    results = []
    with Evaluator(ref_model, data, batch_size=opts.batch_size, num_samples=opts.num_samples, image=opts.image,
                   show_progress=opts.show_progress, plugins=plugins) as evaluator:
        for path, model in loaded:
            check = _PolygraphyCheck(path.stem, opts.atol, opts.rtol) if opts.has_tolerances else None
            ev = evaluator.evaluate(path if model is None else model, path.stem, keep_errors=True, observe=check)
            checks = check_thresholds(ev.outputs, ev.accuracy, opts.fail_below)
            poly = None if check is None else check.passed
            passed = all(c.passed for c in checks) and poly is not False if opts.has_checks else None
            results.append(CandidateResult(path.stem, str(path), ev.outputs, [], ev.accuracy, checks, poly, passed,
                                           ev.errors))
        onnx_candidates = [(r, model) for r, (_, model) in zip(results, loaded) if model is not None]
        if opts.per_layer and onnx_candidates:
            layers = _compare_layers(ref_model, [m for _, m in onnx_candidates], evaluator, opts)
            for (result, _), rows in zip(onnx_candidates, layers):
                result.layers = rows
        num_samples = evaluator.num_samples
    return CompareResult(str(reference), results, num_samples)


def _load_candidate(path: pathlib.Path) -> onnx.ModelProto | None:
    """An ONNX candidate's model (per-layer needs it); None for an engine (its internal tensors are fused away)."""
    if path.suffix == ".onnx":
        return model_io.load(path)
    if not path.is_file():
        raise TrtptqError(f"candidate {path} does not exist.")
    return None


class _PolygraphyCheck:
    """Polygraphy's Comparator with SimpleCompareFunc(atol, rtol) on each batch's outputs; `passed` over all."""

    def __init__(self, name: str, atol: float | None, rtol: float | None):
        from polygraphy.comparator import SimpleCompareFunc

        self.name, self.func, self.passed = name, SimpleCompareFunc(atol=atol, rtol=rtol), True

    def __call__(self, batch, reference: dict, candidate: dict) -> None:
        from polygraphy.comparator import Comparator, IterationResult, RunResults

        from trtptq.runtime.polygraphy import quiet

        results = RunResults([("fp32", [IterationResult(dict(reference), runner_name="fp32")]),
                              (self.name, [IterationResult({k: candidate[k] for k in reference}, runner_name=self.name)])])
        with quiet():
            self.passed &= bool(Comparator.compare_accuracy(results, compare_func=self.func))


def _quantized_inputs(ref_model: onnx.ModelProto, cand_model: onnx.ModelProto) -> dict[str, str]:
    """Graph input -> the candidate's tensor holding its Q/DQ'd value (the output of Q -> DQ on that input)."""
    graph_inputs = {i.name for i in ref_model.graph.input} - {i.name for i in ref_model.graph.initializer}
    quantized = {n.output[0]: n.input[0] for n in cand_model.graph.node
                 if n.op_type == "QuantizeLinear" and n.input[0] in graph_inputs}
    return {quantized[n.input[0]]: n.output[0] for n in cand_model.graph.node
            if n.op_type == "DequantizeLinear" and n.input[0] in quantized}


def _compare_layers(ref_model: onnx.ModelProto, cand_models: list[onnx.ModelProto], evaluator: Evaluator,
                    opts: CompareOptions) -> list[list[LayerRow]]:
    """Per-layer rows for each candidate; every pass runs the reference once and all candidates beside it."""
    cand_tensors = [{o for n in m.graph.node for o in n.output} for m in cand_models]
    producers = {o: node for node in ref_model.graph.node for o in node.output}
    shared = [o for n in ref_model.graph.node for o in n.output
              if n.op_type not in ("Constant", "Shape") and any(o in t for t in cand_tensors)]
    floats = model_io.float_tensors(ref_model, set(shared))
    order = [o for o in shared if o in floats]
    inputs = [_quantized_inputs(ref_model, m) for m in cand_models]  # compared in the first pass
    stats = [{t: ErrorStats(detailed=False) for t in [*quantized, *(o for o in order if o in tensors)]}
             for quantized, tensors in zip(inputs, cand_tensors)]
    # Each quantized input's yardstick: INT8 with the evaluation data's own max, i.e. no clipping.
    amax = {x: 0.0 for q in inputs for x in q}
    for batch in evaluator.batches() if amax else ():
        for x in amax:
            amax[x] = max(amax[x], float(np.abs(batch.feed[x]).max(initial=0)))
    unclipped = {x: ErrorStats(detailed=False) for x in amax}
    budget = opts.memory_budget // (1 + len(cand_models))
    groups = plan_passes(ref_model, order, next(iter(evaluator.batches())).feed, budget) or [[]]
    with progress(total=len(groups) * evaluator.num_batches, enabled=opts.show_progress,
                  desc="comparing layers", unit="batch") as bar:
        for k, group in enumerate(groups):
            first = k == 0
            wanted = [[t for t in group if t in tensors] + (list(q.values()) if first else [])
                      for tensors, q in zip(cand_tensors, inputs)]
            with contextlib.ExitStack() as stack:
                plugins = evaluator.plugins
                ref = (stack.enter_context(OrtRunner(with_outputs(ref_model, group), many_outputs=True, plugins=plugins))
                       if group else None)
                cands = [stack.enter_context(OrtRunner(with_outputs(m, names), simulate_qdq=True, plugins=plugins))
                         if names else None
                         for m, names in zip(cand_models, wanted)]
                for batch in evaluator.batches():
                    expected = {**batch.feed, **(ref.run(batch.feed) if ref else {})}
                    for runner, quantized, s in zip(cands, inputs, stats):
                        got = runner.run(batch.feed) if runner else {}
                        for tensor in (t for t in group if t in s):
                            s[tensor].update(expected[tensor], got[tensor])
                        for graph_input, dequantized in quantized.items() if first else ():
                            s[graph_input].update(expected[graph_input], got[dequantized])
                    for x, st in unclipped.items() if first else ():
                        st.update(batch.feed[x], _int8(batch.feed[x], amax[x]))
                    bar.update(1)
    yardstick = {x: st.snr_db for x, st in unclipped.items()}
    return [_rows({t: st.result() for t, st in s.items()}, order, producers, q, yardstick) for s, q in zip(stats, inputs)]


def _int8(x: np.ndarray, amax: float) -> np.ndarray:
    """x through symmetric per-tensor INT8 Q/DQ with range `amax` (rounding half to even, as ONNX's)."""
    if amax == 0:
        return x
    scale = INT8.scale(amax)
    return (INT8.quantize(x, scale) * scale).astype(x.dtype)


def _rows(results: dict[str, OutputMetrics], order: list[str], producers: dict, quantized: dict[str, str],
          unclipped_snr: dict[str, float]) -> list[LayerRow]:
    """Rows in graph order, quantized inputs first, with the dB each loses.

    A node loses against its worst inexact input. One fed only by exact
    tensors (graph inputs, float layers before any INT8) loses against the best
    inexact row's SNR: an exact input's SNR is a cap, not a level the node fell
    from, and "the input was perfect" must not make the first INT8 layer the
    culprit by default. An exact row loses nothing. A quantized graph input
    loses against INT8 at the data's own max: what its range clips away.
    """
    exact = {t for t, m in results.items() if m.exact}
    best = max((m.snr_db for t, m in results.items() if t not in exact), default=EXACT_SNR_DB)
    rows = [LayerRow(dequantized, graph_input, QDQ_INPUT_OP, m.snr_db, m.cosine, m.max_abs_error,
                     unclipped_snr[graph_input] - m.snr_db, [graph_input])
            for graph_input, dequantized in quantized.items()
            if not (m := results[graph_input]).exact]  # an input Q/DQ leaves unchanged: no row
    for t in (t for t in order if t in results):
        node, m = producers[t], results[t]
        worst_input = min((results[i].snr_db for i in node.input if i in results and i not in exact), default=best)
        rows.append(LayerRow(t, node_label(node), node.op_type, m.snr_db, m.cosine, m.max_abs_error,
                             0.0 if m.exact else worst_input - m.snr_db, list(node.input)))
    return rows


def node_label(node: onnx.NodeProto) -> str:
    """A node's name, or for an unnamed one its op and first output: `Conv(conv_out)`."""
    return node.name or f"{node.op_type}({node.output[0]})"


def check_thresholds(outputs: dict[str, OutputMetrics], accuracy: TaskAccuracy | None, thresholds: dict[str, float],
                     flag: str = "--fail-below") -> list[ThresholdCheck]:
    """One check per (metric, output)."""
    checks = []
    for metric, threshold in thresholds.items():
        if metric == "accuracy":
            if accuracy is None:
                raise TrtptqError(f"{flag} accuracy=... needs labels in the data (a 'labels' array) and a "
                                  "(batch, classes) first output.")
            checks.append(ThresholdCheck(metric, TASK, accuracy.candidate, threshold))
            continue
        found = [ThresholdCheck(metric, name, m.value(metric), threshold) for name, m in outputs.items()
                 if m.value(metric) is not None]
        if not found:
            raise TrtptqError(f"{flag} {metric}=...: no output has {metric} (top-k needs (batch, classes) outputs).")
        checks += found
    return checks
