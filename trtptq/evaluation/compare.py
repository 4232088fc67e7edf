"""Step 4: compare a candidate (Q/DQ or FP16 ONNX, or an engine) with the FP32 reference.

Outputs are run through Polygraphy's Comparator (runners, RunResults,
compare_accuracy for --atol/--rtol); the metrics come from the same results.
Per layer, the tensors both ONNX models share are exposed and compared batch by
batch (streaming sums, so memory stays at one batch), which shows where the
error starts and where it grows.
"""

from __future__ import annotations

import os
import pathlib
from dataclasses import dataclass, field

import numpy as np
import onnx
from tqdm import tqdm

from trtptq.calibration.collect import DEFAULT_MEMORY_BUDGET
from trtptq.calibration.passes import plan_passes, with_outputs
from trtptq.core import model as model_io
from trtptq.core.errors import TrtptqError
from trtptq.data import Batches, ImageOptions, input_specs, open_source
from trtptq.evaluation.metrics import ErrorStats
from trtptq.runtime.ort import session

CHECKABLE = ("cosine", "snr_db", "top1_agreement", "top5_agreement", "accuracy")


@dataclass
class CompareOptions:
    batch_size: int | None = None
    num_samples: int | None = None
    per_layer: bool = True
    fail_below: dict[str, float] = field(default_factory=dict)  # metric -> minimum, e.g. {"cosine": 0.999}
    atol: float | None = None  # Polygraphy's elementwise check, with rtol
    rtol: float | None = None
    memory_budget: int = DEFAULT_MEMORY_BUDGET
    image: ImageOptions = field(default_factory=ImageOptions)
    show_progress: bool = True


@dataclass
class LayerRow:
    tensor: str
    node: str
    op: str
    snr_db: float
    cosine: float
    max_abs_error: float
    drop_db: float  # how much SNR this node loses relative to its worst compared input
    inputs: list[str] = field(default_factory=list)  # the node's inputs in the reference graph


@dataclass
class CandidateResult:
    name: str
    path: str
    outputs: dict[str, dict]
    layers: list[LayerRow]
    accuracy: dict[str, float] | None  # task top-1 vs labels: reference and candidate
    checks: list[dict]
    polygraphy_passed: bool | None
    passed: bool
    error_samples: dict[str, np.ndarray] = field(default_factory=dict, repr=False)

    @property
    def error_source(self) -> LayerRow | None:
        return max(self.layers, key=lambda r: r.drop_db) if self.layers else None


@dataclass
class CompareResult:
    reference: str
    candidates: list[CandidateResult]
    num_samples: int

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.candidates)


def parse_thresholds(items: list[str]) -> dict[str, float]:
    """['cosine=0.999', 'snr_db=20'] -> dict, with the metric names checked."""
    out = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or name not in CHECKABLE:
            raise TrtptqError(f"bad --fail-below {item!r}: use METRIC=VALUE with METRIC one of {', '.join(CHECKABLE)}")
        try:
            out[name] = float(value)
        except ValueError:
            raise TrtptqError(f"bad --fail-below {item!r}: {value!r} is not a number") from None
    return out


def compare(reference: str | os.PathLike, candidates: list[str | os.PathLike], data,
            options: CompareOptions | None = None) -> CompareResult:
    """Compare every candidate with the FP32 reference on `data` (same sources as calibration)."""
    opts = options or CompareOptions()
    ref_model = model_io.load(reference)
    specs = input_specs(ref_model)
    batches = Batches(open_source(data, specs, opts.image), specs, opts.batch_size, opts.num_samples)
    loaded = list(batches)  # the evaluation set is fed to every runner, as Polygraphy's data-loader cache does
    results = []
    for path in candidates:
        path = pathlib.Path(path)
        if path.suffix == ".onnx":
            cand_model = model_io.load(path)
            runner = _runner(cand_model, "candidate")
        else:  # a serialized engine: outputs only (its internal tensors are fused away)
            cand_model, runner = None, _engine_runner(path)
        outputs, accuracy, errors, poly = _compare_outputs(ref_model, runner, loaded, opts, path)
        layers = _compare_layers(ref_model, cand_model, loaded, opts) if opts.per_layer and cand_model else []
        checks = _checks(outputs, accuracy, opts.fail_below)
        passed = all(c["passed"] for c in checks) and poly is not False
        results.append(CandidateResult(path.stem, str(path), outputs, layers, accuracy, checks, poly, passed, errors))
    return CompareResult(str(reference), results, sum(b.size for b in loaded))


def _runner(model: onnx.ModelProto, name: str):
    from polygraphy.backend.onnxrt import OnnxrtRunner

    # Q/DQ run as float ops (ORT's fused INT8 kernels are not what TensorRT computes).
    return OnnxrtRunner(session(model, simulate_int8=True), name=name)


def _engine_runner(path: pathlib.Path):
    from trtptq.core.trt import get_backend, polygraphy_backend

    if not path.is_file():
        raise TrtptqError(f"candidate {path} does not exist.")
    poly_trt = polygraphy_backend(get_backend())
    return poly_trt.TrtRunner(poly_trt.EngineFromBytes(path.read_bytes()), name="engine")


def _compare_outputs(ref_model, runner, batches, opts: CompareOptions, path: pathlib.Path):
    from polygraphy.comparator import Comparator, SimpleCompareFunc
    from polygraphy.exception import PolygraphyException
    from polygraphy.logger import G_LOGGER

    with G_LOGGER.verbosity(G_LOGGER.CRITICAL):  # our report says it all, once
        try:
            run_results = Comparator.run([_runner(ref_model, "fp32"), runner], data_loader=[b.feed for b in batches])
        except PolygraphyException as e:
            raise TrtptqError(f"cannot run {path}: {e} An engine runs only on a GPU it was built for "
                              "(TensorRT-RTX: compute capability 7.5, 8.x, 12.x); compare its .onnx on the CPU "
                              "instead.") from None
        poly = None
        if opts.atol is not None or opts.rtol is not None:
            func = SimpleCompareFunc(atol=opts.atol, rtol=opts.rtol)
            poly = bool(Comparator.compare_accuracy(run_results, compare_func=func))
    (_, ref_iters), (_, cand_iters) = run_results.items()
    stats: dict[str, ErrorStats] = {}
    ref_top, cand_top, labels = [], [], []
    for batch, ref_out, cand_out in zip(batches, ref_iters, cand_iters):
        for name in ref_out.keys():
            stats.setdefault(name, ErrorStats()).update(ref_out[name], cand_out[name], keep_errors=True)
        first = next(iter(ref_out.keys()))
        if batch.labels is not None and np.ndim(ref_out[first]) == 2:
            ref_top.append(np.argmax(ref_out[first], 1))
            cand_top.append(np.argmax(cand_out[first], 1))
            labels.append(batch.labels)
    accuracy = None
    if labels and len(labels) == len(batches):
        y = np.concatenate(labels)
        accuracy = {"reference": float(np.mean(np.concatenate(ref_top) == y)),
                    "candidate": float(np.mean(np.concatenate(cand_top) == y))}
    errors = {n: np.concatenate(s.errors) for n, s in stats.items() if s.errors}
    return {n: s.result() for n, s in stats.items()}, accuracy, errors, poly


def _compare_layers(ref_model: onnx.ModelProto, cand_model: onnx.ModelProto, batches, opts) -> list[LayerRow]:
    cand_tensors = {o for n in cand_model.graph.node for o in n.output}
    producers = {}
    for node in ref_model.graph.node:
        for o in node.output:
            producers[o] = node
    shared = [o for n in ref_model.graph.node for o in n.output
              if o in cand_tensors and n.op_type not in ("Constant", "Shape")]
    floats = model_io.float_tensors(ref_model, set(shared))
    order = [o for o in shared if o in floats]
    stats = {t: ErrorStats() for t in order}
    groups = plan_passes(ref_model, order, batches[0].feed, opts.memory_budget // 2)
    with tqdm(total=len(groups) * len(batches), desc="comparing layers", unit="batch",
              disable=not opts.show_progress or None) as bar:
        for group in groups:
            ref_sess = session(with_outputs(ref_model, group), many_outputs=True)
            cand_sess = session(with_outputs(cand_model, group), simulate_int8=True)
            for batch in batches:
                for name, r, c in zip(group, ref_sess.run(group, batch.feed), cand_sess.run(group, batch.feed)):
                    stats[name].update(r, c)
                bar.update(1)
    results = {t: s.result() for t, s in stats.items()}
    # Nodes fed only by graph inputs (exact in both models) are measured against the best layer's SNR,
    # so "the input was perfect" does not make the first layer the culprit by default.
    best = max((r["snr_db"] for r in results.values()), default=200.0)
    rows = []
    for t in order:
        node = producers[t]
        inputs = [results[i]["snr_db"] for i in node.input if i in results]
        drop = (min(inputs) if inputs else best) - results[t]["snr_db"]
        rows.append(LayerRow(t, node.name, node.op_type, results[t]["snr_db"], results[t]["cosine"],
                             results[t]["max_abs_error"], drop, list(node.input)))
    return rows


def _checks(outputs: dict[str, dict], accuracy, fail_below: dict[str, float]) -> list[dict]:
    checks = []
    for metric, threshold in fail_below.items():
        if metric == "accuracy":
            if accuracy is None:
                raise TrtptqError("--fail-below accuracy=... needs labels in the data (a 'labels' array).")
            checks.append({"metric": metric, "output": "(task)", "value": accuracy["candidate"],
                           "threshold": threshold, "passed": accuracy["candidate"] >= threshold})
            continue
        for name, m in outputs.items():
            if metric in m:
                checks.append({"metric": metric, "output": name, "value": m[metric], "threshold": threshold,
                               "passed": m[metric] >= threshold})
    return checks
