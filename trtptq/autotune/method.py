"""`--method auto`: every method's ranges from one histogram collection, mixed per tensor, the best model kept.

Each single method's ranges are scored on the model's outputs against FP32;
then the best of them is refined per tensor: a tensor whose consumer layers
keep clearly less local error with another method's range (`local.local_snr`:
all layers, all methods, one run) takes that range. The best of all is kept,
so auto is never worse than the best single method on the scoring samples.
Scoring is where the time goes, so no candidate is scored further than it
must be: one whose layers' local noise adds up to HOPELESS times the best
candidate's (10 dB worse) is not scored, and the others run most promising
first and stop as soon as their error so far caps them below the best score
(`_Race`): only the winner's score is always exact.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import onnx

from trtptq.autotune.budget import held
from trtptq.autotune.local import first_samples, local_snr
from trtptq.data import Batches
from trtptq.evaluation.evaluator import Evaluator
from trtptq.evaluation.metrics import ErrorStats, combined_snr_db, noise_power, snr_db
from trtptq.plugins import BUILTIN, Plugins
from trtptq.quantization.qdq import Plan, quantized_model, with_scales

PER_TENSOR = "per-tensor"  # the candidate whose every tensor has its own method
HOPELESS = 10.0  # a candidate whose layers' summed local noise is this many times the best's is not scored
LOCAL_SAMPLES = 8  # samples the local errors are measured on: per-element statistics over whole layers settle fast
MARGIN_DB = 1.0  # how much less local noise another method must leave at a tensor's consumers to replace the best


@dataclass
class MethodChoice:
    method: str  # a method name, or PER_TENSOR
    amax: dict[str, float]
    scores: dict[str, float | None]  # candidate -> output SNR vs FP32 (dB, outputs combined); None: could not win (_Race)
    per_tensor: dict[str, str]  # tensor -> the method the per-tensor candidate gave it


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
                  plugins: Plugins = BUILTIN) -> MethodChoice:
    """Score each method's ranges on the first `samples` samples, then the best one with the tensors whose local
    error another method clearly lowers switched to it; keep the best of all.

    No labels needed: the FP32 model is the reference, as in `trtptq compare`; it
    runs once, and every candidate runs in real batches against it. Candidates
    differ only in their Q/DQ scales, so one Q/DQ model is built and each
    candidate is that model with its scales swapped (`with_scales`). Every run holds what the calibration's
    largest pass under `memory_budget` held (`budget.held`).
    """
    methods = list(by_method)
    limit = min(samples, batches.num_samples or samples)
    limits = held(model, plan, batches, memory_budget)
    template = quantized_model(model, plan, by_method[methods[0]])
    with Evaluator(model, batches.source, batch_size=limits.batch_size, num_samples=limit, memory_budget=limits.bytes,
                   plugins=plugins) as evaluator:
        local = local_snr(model, plan, by_method, plan.quantized_nodes,
                          first_samples(evaluator.batches(), LOCAL_SAMPLES, batches.fixed_batch), show_progress, plugins)
        predicted = {m: sum(noise_power(per[m]) for per in local.values()) for m in methods}
        floor = min(predicted.values())
        scores: dict[str, float | None] = dict.fromkeys(methods)  # None: hopeless, or stopped once it could not win
        candidates = dict(by_method)
        race = _Race(evaluator)

        def score(name: str) -> None:
            same = next((other for other in race.ran if candidates[other] == candidates[name]), None)
            scores[name] = scores[same] if same is not None else race.score(with_scales(template, candidates[name]),
                                                                            name)

        for method in sorted((m for m in methods if predicted[m] <= HOPELESS * floor), key=predicted.get):
            score(method)  # the most promising first: the bar the others must reach is high early
        base = max((m for m in methods if scores[m] is not None), key=scores.get)
        chosen = per_tensor_methods(local, plan, base)
        candidates[PER_TENSOR] = {t: by_method[m][t] for t, m in chosen.items()}
        score(PER_TENSOR)
    scored = {name: db for name, db in scores.items() if db is not None}
    best = max(scored, key=scored.get)  # dict order breaks ties: a single method before the mix
    return MethodChoice(best, candidates[best], scores, chosen)


class _Race:
    """Candidates scored in turn (output SNR vs FP32 in dB, outputs combined as `evaluation.metrics` does, to 3
    decimals); one whose error so far already caps its score below the best one's stops there, as None: the
    reference's signal over the whole set is known once one candidate ran through, and the error of the batches
    left can only lower the score. The best is exact."""

    def __init__(self, evaluator: Evaluator):
        self.evaluator = evaluator
        self.best = -math.inf
        self.signal: dict[str, float] = {}  # output -> sum ref^2 over the set
        self.ran: list[str] = []

    def score(self, candidate: onnx.ModelProto, name: str) -> float | None:
        self.ran.append(name)
        stats = {output: ErrorStats(detailed=False) for output in self.evaluator.output_names}
        with contextlib.closing(self.evaluator.pairs(candidate, name)) as pairs:
            for _, reference, outputs in pairs:
                for output, s in stats.items():
                    s.update(reference[output], outputs[output])
                if self.signal and _combined_db(self.signal, {o: s.err_sq for o, s in stats.items()}) < self.best:
                    return None
        self.signal = {output: s.ref_sq for output, s in stats.items()}
        db = _combined_db(self.signal, {o: s.err_sq for o, s in stats.items()})
        self.best = max(self.best, db)
        return db


def _combined_db(signal: dict[str, float], error: dict[str, float]) -> float:
    return round(combined_snr_db(snr_db(signal[o], error[o]) for o in signal), 3)
