"""Fallback to an accuracy budget: keep the fewest INT8 layers in float that make every target hold.

The search walks the sensitivity ranking: prefixes of doubling length until the
targets hold, a bisection back to the shortest prefix that does, then a
pruning pass that drops each kept layer (least damaging first) whose return to
INT8 still meets the targets, since the ranking is an estimate and a prefix
may carry passengers. Every model tried is one evaluation on the evaluation
data against the cached FP32 outputs; repeats are cached.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import onnx

from trtptq.autotune.gated import GatedModel
from trtptq.autotune.sensitivity import Sensitivity
from trtptq.core.log import progress
from trtptq.evaluation.compare import TASK, ThresholdCheck, check_thresholds
from trtptq.evaluation.evaluator import EvaluationResult, Evaluator
from trtptq.quantization.qdq import Plan

logger = logging.getLogger(__name__)


@dataclass
class Trial:
    kept: tuple[str, ...]
    evaluation: EvaluationResult
    checks: list[ThresholdCheck]

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)

    def summary(self) -> dict:
        """The targets' metrics as a dict: metric (of output) -> value."""
        return {c.metric + ("" if c.output == TASK else f" ({c.output})"): round(c.value, 6) for c in self.checks}


@dataclass
class Fallback:
    """What the search found: the plan to write, the layers it keeps in float and why, before and after."""

    plan: Plan
    kept: dict[str, str]  # node -> why it stays in float
    targets: dict[str, float]
    before: dict[str, float]
    after: dict[str, float]
    met: bool
    evaluations: int  # full-model evaluations: the search's and the sensitivity ranking's
    trials: list[dict] = field(default_factory=list)  # every configuration tried, in order

    def to_dict(self) -> dict:
        return {"targets": self.targets, "met": self.met, "kept": self.kept, "before": self.before,
                "after": self.after, "evaluations": self.evaluations, "trials": self.trials}


def fall_back(model: onnx.ModelProto, plan: Plan, amax: dict[str, float], evaluator: Evaluator,
              targets: dict[str, float], rank: Callable[[GatedModel], Sensitivity], show_progress: bool = True
              ) -> tuple[Fallback, Sensitivity | None]:
    """Search the fewest layers to keep in float so that every target holds, in the order `rank(gated)` gives
    (called with the search's session, only when the INT8 model misses a target); the sensitivity it used, if any,
    comes back beside the result."""
    sensitivity = None
    with GatedModel(model, plan, amax, evaluator.plugins) as gated:
        search = _Search(gated, evaluator, targets)
        start = best = search.trial([])
        if not start.passed:
            sensitivity = rank(gated)
            order = sensitivity.ranking
            with progress(total=None, enabled=show_progress, desc="fallback search", unit="model") as search.bar:
                best = _shortest_prefix(order, search.trial) or max(search.tried.values(),
                                                                      key=lambda t: t.evaluation.snr_db)
                if best.passed:
                    best = _prune(best, order, search.trial)
            if not best.passed:
                logger.warning("the targets (%s) are not met even with all %d INT8 layers in float; keeping the best "
                               "model found", ", ".join(f"{m}={v:g}" for m, v in targets.items()), len(order))
    why = {node: _reason(node, sensitivity, targets) for node in best.kept}
    trials = [{"kept": list(t.kept), "passed": t.passed, **t.summary()} for t in search.tried.values()]
    evaluations = len(search.tried) + (sensitivity.evaluations if sensitivity else 0)  # the ranking's count too
    return Fallback(plan.without(why), why, targets, start.summary(), best.summary(), best.passed, evaluations,
                    trials), sensitivity


class _Search:
    """The trials of one search: each set of layers kept in float evaluated once, as a gate setting of one session."""

    def __init__(self, gated: GatedModel, evaluator: Evaluator, targets: dict[str, float]):
        self.gated, self.evaluator, self.targets = gated, evaluator, targets
        self.tried: dict[frozenset, Trial] = {}
        self.bar = None  # the search's progress bar, once there is a search

    def trial(self, kept: list[str]) -> Trial:
        key = frozenset(kept)
        if key not in self.tried:
            int8 = [n for n in self.gated.nodes if n not in key]
            ev = self.evaluator.evaluate(self.gated.variant(int8, f"{len(kept)} in float"))
            self.tried[key] = Trial(tuple(kept), ev, check_thresholds(ev.outputs, ev.accuracy, self.targets, "--target"))
            if self.bar is not None:
                self.bar.update(1)
        return self.tried[key]


def _shortest_prefix(order: list[str], trial) -> object | None:
    """The shortest prefix of `order` whose trial passes (doubling, then bisection); None if even all fail."""
    lo, k = 0, 1  # prefixes of length <= lo fail
    while True:
        k = min(k, len(order))
        if trial(order[:k]).passed:
            break
        if k == len(order):
            return None
        lo, k = k, 2 * k
    hi = k  # passes
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if trial(order[:mid]).passed:
            hi = mid
        else:
            lo = mid
    return trial(order[:hi])


def _prune(best: Trial, order: list[str], trial) -> Trial:
    """Return each kept layer to INT8, least damaging first, where the targets still hold without it."""
    kept = list(best.kept)
    for node in sorted(best.kept, key=order.index, reverse=True):
        fewer = [n for n in kept if n != node]
        if trial(fewer).passed:
            kept = fewer
    return trial(kept)


def _reason(node: str, sensitivity: Sensitivity, targets: dict[str, float]) -> str:
    rank = sensitivity.ranking.index(node)
    layer = sensitivity.layers[rank]
    goal = " ".join(f"{m}={v:g}" for m, v in targets.items())
    return (f"kept in float for --target {goal}: sensitivity rank {rank + 1}, output SNR {layer.alone_snr_db:.1f} dB "
            "with only this layer in INT8")
