"""`--method auto`: every method's ranges from one histogram collection, mixed per tensor, the best model kept.

Each layer's local error is measured with every method's ranges (`local.local_snr`:
all layers, all methods, one run); the method whose layers keep the least local
noise is refined per tensor: a tensor whose consumer layers keep clearly less
local error with another method's range takes that range. That mix and each
single method are scored on the model's outputs against FP32; where the outputs
prefer another single method than the mix was built on, the mix rebuilt around it
is scored too. The best of all is kept, so auto is never worse than the best single
method on the scoring samples.
Scoring is where the time goes, so no candidate is scored further than it
must be: one whose layers' local noise adds up to HOPELESS times the best
candidate's (10 dB worse) is not scored, and the others run most promising
first and stop as soon as their error so far caps them below the best score
(`_Race`): only the winner's score is always exact.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import onnx

from trtptq.autotune.budget import held
from trtptq.autotune.formats import choose_formats
from trtptq.autotune.local import first_samples, local_snr
from trtptq.autotune.metric import TaskMetric
from trtptq.core.formats import FORMATS, FP8, INT4, INT8, QuantFormat
from trtptq.core.precision import NodePrecision
from trtptq.data import Batches
from trtptq.evaluation.evaluator import Evaluator
from trtptq.evaluation.metrics import ErrorStats, combined_snr_db, noise_power, snr_db
from trtptq.plugins import BUILTIN, Plugins
from trtptq.quantization.insert import FedScales, quantized_model
from trtptq.quantization.qdq import Plan
from trtptq.quantization.weights import Int4Weights
from trtptq.runtime.ort import OrtRunner
from trtptq.runtime.runner import WithFeeds

PER_TENSOR = "per-tensor"  # the candidate whose every tensor has its own method
ALL_INT8, ALL_FP8, PER_LAYER = "all-INT8", "all-FP8", "per layer"  # --precision auto's candidates
HOPELESS = 10.0  # a candidate whose layers' summed local noise is this many times the best's is not scored
MARGIN_DB = 1.0  # how much less local noise another method must leave at a tensor's consumers to replace the best


@dataclass
class MethodChoice:
    method: str  # a method name, or PER_TENSOR
    amax: dict[str, float]
    scores: dict[str, float | None]  # candidate -> output SNR vs FP32 (dB, outputs combined); None: could not win (_Race)
    per_tensor: dict[str, str]  # tensor -> the method the per-tensor candidate gave it
    #: --precision auto: node -> its format and why (empty: every node in the plan's format), and each format
    #: candidate's score (ALL_INT8, ALL_FP8, PER_LAYER) as `scores`
    precisions: dict[str, NodePrecision] = field(default_factory=dict)
    format_scores: dict[str, float | None] = field(default_factory=dict)
    kept: str = ""  # the candidate kept, as `scores` names it ("per-tensor on mse" where `method` is PER_TENSOR)


def per_tensor_methods(local: dict[str, dict[str, float]], plan: Plan, base: str, margin_db: float = MARGIN_DB
                       ) -> dict[str, str]:
    """tensor -> its method: `base`, unless another leaves its consumer layers at least `margin_db` less local noise
    (the least noisy such method, first on ties)."""
    methods = list(next(iter(local.values()), {}))
    chosen = {}
    for t, consumers in plan.activations.items():
        summed = {m: sum(noise_power(local[c][m]) for c in consumers if c in local) for m in methods}
        best = min(methods, key=summed.get) if methods else base
        chosen[t] = best if summed.get(best, 0.0) * 10 ** (margin_db / 10) < summed.get(base, 0.0) else base
    return chosen


def choose_method(model: onnx.ModelProto, plan: Plan, by_method: dict[str, dict[str, float]], batches: Batches,
                  samples: int, memory_budget: int, show_progress: bool = False,
                  plugins: Plugins = BUILTIN, formats: Sequence[QuantFormat] = (),
                  metric: TaskMetric | None = None, observed: dict[str, float] | None = None) -> MethodChoice:
    """Score, on the first `samples` samples, the ranges of the method whose layers keep the least local error with
    the tensors another method clearly improves switched to it, then each method's own; keep the best of all.

    No labels needed: the FP32 model is the reference, as in `trtptq compare`; it
    runs once, and every candidate runs in real batches against it. Candidates
    differ only in their Q/DQ scales, so one Q/DQ model is built and each
    candidate is that model with its scales fed (`FedScales`: one session for them all). Every run holds what the calibration's
    largest pass under `memory_budget` held (`budget.held`).

    With `formats` beyond INT8 (--precision auto), the same local run measures each layer in each of them
    (FP8 at `observed`, each tensor's largest |value| in the calibration data), `autotune.formats` chooses per
    layer, and the mix races all-INT8 (the best ranges found) and all-FP8: the best of the three is kept. All-FP8
    races first where its layers keep less local noise than any INT8 ranges do. INT4 copies measure round-to-nearest
    weights (`Int4Weights` without statistics); the candidates carry the plan's own INT4 rounding.
    `metric` (--metric) scores the candidates in place of output SNR.
    """
    methods = list(by_method)
    others = [f for f in formats if f is not INT8]
    fp8_amax = observed or {}  # E4M3 wants the max: clipping ranges cost it
    sets = {**by_method, **{f.name: fp8_amax if f.activations else by_method[methods[0]] for f in others}}
    limit = min(samples, batches.num_samples or samples)
    limits = held(model, plan, batches, memory_budget)
    template = FedScales.of(quantized_model(model, plan, by_method[methods[0]]), plan.activations)
    with Evaluator(model, batches.source, batch_size=limits.batch_size, num_samples=limit, memory_budget=limits.bytes,
                   plugins=plugins) as evaluator:
        # INT4 copies at round-to-nearest weights: the activation-aware rounding costs 4x as much (MiniLM: 0.66 s of
        # a 9 s auto), only the layers that take INT4 need it, and it keeps less error than measured (MiniLM: 0.7 dB
        # less noise summed over its 36 layers)
        local = local_snr(model, replace(plan, int4=Int4Weights()) if INT4 in others else plan, sets, plan.quantized_nodes,
                          first_samples(evaluator.batches(), limits.local_samples, batches.fixed_batch), show_progress, plugins,
                          {f.name: f.name for f in others})
        predicted = {m: sum(noise_power(per[m]) for per in local.values() if m in per) for m in methods}
        floor, base = min(predicted.values()), min(methods, key=predicted.get)
        by_node = {n: {m: per[m] for m in methods if m in per} for n, per in local.items()}
        mixes = {PER_TENSOR: per_tensor_methods(by_node, plan, base)}
        # None: hopeless, or stopped once it could not win
        scores: dict[str, float | None] = dict.fromkeys([*methods, PER_TENSOR])
        candidates = {**by_method, PER_TENSOR: {t: by_method[m][t] for t, m in mixes[PER_TENSOR].items()}}
        race = _Race(evaluator, metric)
        early: dict[str, tuple[dict[str, float], float | None]] = {}
        everywhere = _all_fp8(plan, formats)
        if everywhere and _noise(local, everywhere, base) < floor:
            # all-FP8 keeps less local noise than any INT8 ranges: it runs first, so that its score is the bar the
            # INT8 candidates must reach (those that fall short stop after a batch or two); the tensors no FP8 layer
            # reads take the ranges of least local noise
            early[ALL_FP8] = _score_formats(model, plan, everywhere, fp8_amax, by_method[base], race, ALL_FP8)

        def score(name: str) -> None:
            same = next((other for other in race.ran if candidates.get(other) == candidates[name]), None)
            if same is not None:
                scores[name], race.snr[name] = scores[same], race.snr.get(same)
            else:
                scores[name] = race.score(WithFeeds(shared, template.feeds(candidates[name]), name), name)

        with OrtRunner(template.model, simulate_qdq=True, name="candidates", plugins=plugins) as shared:
            # The most promising first, so that the bar the others must reach is high early: the mix (the least local
            # noise by construction), then the single methods by their local noise.
            for name in [PER_TENSOR, *sorted((m for m in methods if predicted[m] <= HOPELESS * floor),
                                             key=predicted.get)]:
                score(name)
            best = race.best_of(scores) or base  # none scored: all fell short of all-FP8; INT8 keeps the least noise
            if best in methods and best != base:
                # The outputs prefer another method than the local noise did (it weighs clipping and rounding alike,
                # the outputs do not): the mix around the method they prefer races too.
                mix = per_tensor_methods(by_node, plan, best)
                amax = {t: by_method[m][t] for t, m in mix.items()}
                if amax not in candidates.values():  # else it is a candidate already scored (no tensor switched)
                    name = f"{PER_TENSOR} on {best}"
                    mixes[name], candidates[name], scores[name] = mix, amax, None
                    score(name)
                    best = race.best_of(scores) or best
        result = MethodChoice(PER_TENSOR if best in mixes else best, candidates[best], scores,
                              mixes.get(best, mixes[PER_TENSOR]), kept=best)
        if others:
            _choose_formats(model, plan, local, result, fp8_amax, formats, race, best, early)
    return result


def _all_fp8(plan: Plan, formats: Sequence[QuantFormat]) -> dict[str, str]:
    """node -> FP8 for each node whose precision is not pinned and that takes FP8 (empty: FP8 is not a format)."""
    return {n: FP8.name for n in plan.quantized_nodes
            if FP8 in formats and not plan.precision.nodes[n].pinned and FP8 in plan.formats_for(n)}


def _noise(local: dict[str, dict[str, float]], formats: dict[str, str], method: str) -> float:
    """The local noise summed over the layers, each in its format in `formats`, the others in INT8 at `method`."""
    return sum(noise_power(per[formats[n]] if formats.get(n) in per else per[method])
               for n, per in local.items() if method in per)


def _score_formats(model: onnx.ModelProto, plan: Plan, precisions: dict[str, str], fp8_amax: dict[str, float],
                   int8_amax: dict[str, float], race: _Race, name: str) -> tuple[dict[str, float], float | None]:
    """Race the plan with `precisions` (node -> format) applied: the tensors an FP8 layer reads take `fp8_amax`, the
    others `int8_amax`. (its ranges, its score)"""
    mixed = plan.with_precisions({n: NodePrecision(plan.precision.nodes[n].op, p) for n, p in precisions.items()})
    amax = {t: fp8_amax[t] if any(mixed.format_of(c) is FP8 for c in consumers) else int8_amax[t]
            for t, consumers in plan.activations.items()}
    return amax, race.score(quantized_model(model, mixed, amax), name)


def _choose_formats(model: onnx.ModelProto, plan: Plan, local: dict[str, dict[str, float]], choice: MethodChoice,
                    fp8_amax: dict[str, float], formats: Sequence[QuantFormat], race: _Race, raced: str,
                    early: dict[str, tuple[dict[str, float], float | None]]) -> None:
    """Race the per-layer formats (`autotune.formats`) and all-FP8 (unless it ran `early`) against the INT8 choice
    (the candidate `raced`); the best one into `choice` (its precisions, ranges and format scores)."""
    inputs = {n: [t for t, consumers in plan.activations.items() if n in consumers] for n in plan.quantized_nodes}
    method = {n: choice.per_tensor.get(ts[0], choice.method) if choice.method == PER_TENSOR and ts else choice.method
              for n, ts in inputs.items()}
    by_format = {n: {**{f: db for f, db in per.items() if f in FORMATS}, INT8.name: per[method[n]]}
                 for n, per in local.items() if method[n] in per}
    per_layer = choose_formats(plan, by_format, formats)
    free = [n for n in plan.quantized_nodes if not plan.precision.nodes[n].pinned]
    candidates = {ALL_INT8: dict.fromkeys(free, INT8.name), ALL_FP8: _all_fp8(plan, formats),
                  PER_LAYER: {n: p.precision for n, p in per_layer.items()}}
    choice.format_scores = {ALL_INT8: choice.scores[raced]}
    race.snr[ALL_INT8] = race.snr.get(raced)
    amax_of = {ALL_INT8: choice.amax}
    for name in (ALL_FP8, PER_LAYER):
        if name in early:
            amax_of[name], choice.format_scores[name] = early[name]
        elif candidates[name] and candidates[name] not in [candidates[k] for k in amax_of]:
            # (not: nothing in FP8, or the same mix as one already scored)
            amax_of[name], choice.format_scores[name] = _score_formats(model, plan, candidates[name], fp8_amax,
                                                                       choice.amax, race, name)
    best = race.best_of(choice.format_scores)  # on ties all-INT8, all-FP8, the mix
    if best == PER_LAYER:
        choice.precisions = per_layer
    else:
        others = "".join(f"; {k} {'not scored (could not win)' if v is None else f'{v:.1f}'}"
                         for k, v in choice.format_scores.items() if k != best)
        why = f"--precision auto: {best} scored best ({choice.format_scores[best]:.1f}{others})"
        choice.precisions = {n: NodePrecision(plan.precision.nodes[n].op, p, why) for n, p in candidates[best].items()}
    choice.amax = amax_of[best]


class _Race:
    """Candidates scored in turn (output SNR vs FP32 in dB, outputs combined as `evaluation.metrics` does, to 3
    decimals); one whose error so far already caps its score below the best one's stops there, as None: the
    reference's signal over the whole set is known once one candidate ran through, and the error of the batches
    left can only lower the score. Candidates after the first run the batches the best one erred most on first,
    so a loser's error passes the bar sooner; the sums are kept per batch and added in batch order, so a score
    does not depend on the order it ran in. The best is exact. With a task `metric`, every candidate runs through
    and scores its value (to 6 decimals), and its output SNR breaks ties (a task metric on a few samples often ties)."""

    def __init__(self, evaluator: Evaluator, metric: TaskMetric | None = None):
        self.evaluator, self.metric = evaluator, metric
        self.best = -math.inf
        self.signal: dict[str, float] = {}  # output -> sum ref^2 over the set
        self.worst_first: list[int] | None = None  # batch order: the best candidate's largest errors first
        self.ran: list[str] = []
        self.snr: dict[str, float | None] = {}  # with a metric: each candidate's output SNR, the tie-breaker

    def rank(self, name: str, score: float) -> tuple[float, float]:
        """What orders candidates: the score, then (with a metric) the output SNR."""
        return score, self.snr.get(name) or -math.inf

    def best_of(self, scores: dict[str, float | None]) -> str | None:
        """The best scored candidate (None: none scored); on ties the first in `scores`' order."""
        scored = {name: db for name, db in scores.items() if db is not None}
        return max(scored, key=lambda m: self.rank(m, scored[m]), default=None)

    def score(self, candidate: onnx.ModelProto, name: str) -> float | None:
        self.ran.append(name)
        if self.metric is not None:
            score = self.metric.start()
            self.snr[name] = self.evaluator.evaluate(candidate, name, observe=score.update).snr_db
            value = round(score.value(), 6)
            self.best = max(self.best, value)
            return value
        names = self.evaluator.output_names
        order = self.worst_first or list(range(self.evaluator.num_batches))
        error, signal = np.zeros((len(order), len(names))), np.zeros((len(order), len(names)))
        with contextlib.closing(self.evaluator.pairs(candidate, name, order)) as pairs:
            for k, (_, reference, outputs) in zip(order, pairs):
                for j, output in enumerate(names):
                    stats = ErrorStats(detailed=False)
                    stats.update(reference[output], outputs[output])
                    error[k, j], signal[k, j] = stats.err_sq, stats.ref_sq
                if self.signal and _combined_db(self.signal, dict(zip(names, error.sum(0)))) < self.best:
                    return None
        self.signal = dict(zip(names, signal.sum(0)))
        db = _combined_db(self.signal, dict(zip(names, error.sum(0))))
        if db > self.best:
            self.best = db
            noise = error / np.maximum(signal.sum(0), np.finfo(float).tiny)  # each output's share of its own signal
            self.worst_first = np.argsort(-noise.sum(1), kind="stable").tolist()
        return db


def _combined_db(signal: dict[str, float], error: dict[str, float]) -> float:
    return round(combined_snr_db(snr_db(signal[o], error[o]) for o in signal), 3)
