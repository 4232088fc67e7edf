"""Fallback to an accuracy budget: walk the fewest, most sensitive layers up the precision ladder until every target
holds.

The ladder is INT4 -> INT8 -> FP8 -> FP16 -> FP32, restricted to the formats
the run may write (`QuantizeOptions.formats`: what every target GPU runs) and
the layer's op takes; FP16 is simulated as FP16 inputs and weights, and means
FP16 in an engine built with --fp16 (FP32 stays FP32 there). The search walks
the sensitivity ranking: prefixes of doubling length in float until the targets
hold, a bisection back to the shortest prefix that does; then each layer of
it, least damaging first, takes the lowest rung from its own format up that
still meets the targets (its own format again if the ranking's estimate put it
there wrongly), else stays FP32. A layer --layer-precision placed starts on
its given rung and moves like the others. Every model tried is one evaluation on the
evaluation data against the cached FP32 outputs (a gate setting of one session
per phase); repeats are cached. On a cluster, the models the next steps may
ask for run at once on the workers (`variants.Workers`): the next doubling
prefixes, the next levels of the bisection, every rung of a layer; the search
then takes the same steps on their results, and finds and records what one
process does (the models it never asked for are not recorded).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import onnx

from trtptq.autotune.gated import GatedModel
from trtptq.autotune.metric import TaskMetric
from trtptq.autotune.sensitivity import Sensitivity
from trtptq.autotune.variants import Workers, evaluate
from trtptq.calibration.cluster import Cluster
from trtptq.core import precision
from trtptq.core.log import progress
from trtptq.core.precision import NodePrecision
from trtptq.evaluation.compare import TASK, ThresholdCheck, check_thresholds
from trtptq.evaluation.evaluator import EvaluationResult, Evaluator
from trtptq.quantization.qdq import Plan

logger = logging.getLogger(__name__)
METRIC_TARGET = "metric"  # --target metric=MIN: the minimum of --metric
LADDER = (precision.INT4, precision.INT8, precision.FP8, precision.FP16, precision.FP32)


@dataclass
class Trial:
    moved: tuple[tuple[str, str], ...]  # (node, precision) of the layers off their own format
    evaluation: EvaluationResult
    checks: list[ThresholdCheck]
    score: float  # what ranks trials that all miss: --metric's value, else output SNR
    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)

    def summary(self) -> dict:
        """The targets' metrics as a dict: metric (of output) -> value."""
        return {c.metric + ("" if c.output == TASK else f" ({c.output})"): round(c.value, 6) for c in self.checks}


@dataclass
class Fallback:
    """What the search found: the plan to write, the layers it moved up the ladder and why, before and after."""

    plan: Plan
    moved: dict[str, NodePrecision]  # node -> its precision on the ladder and why
    targets: dict[str, float]
    before: dict[str, float]
    after: dict[str, float]
    met: bool
    evaluations: int  # full-model evaluations: the search's and the sensitivity ranking's
    trials: list[dict] = field(default_factory=list)  # every configuration tried, in order

    def to_dict(self) -> dict:
        moved = {node: {"precision": p.precision, "reason": p.reason} for node, p in self.moved.items()}
        return {"targets": self.targets, "met": self.met, "moved": moved, "before": self.before,
                "after": self.after, "evaluations": self.evaluations, "trials": self.trials}


def rungs(plan: Plan, node: str, formats: Sequence[str]) -> list[str]:
    """The precisions above `node`'s own on the ladder that it may take: those of `formats` its op takes, FP16, FP32."""
    own = plan.precision.nodes[node].precision
    allowed = {f.name for f in plan.formats_for(node) if f.name in formats} | {precision.FP16, precision.FP32}
    return [p for p in LADDER[LADDER.index(own) + 1:] if p in allowed]


def fall_back(model: onnx.ModelProto, plan: Plan, amax: dict[str, float], evaluator: Evaluator,
              targets: dict[str, float], rank: Callable[[GatedModel], Sensitivity], formats: Sequence[str] = (),
              show_progress: bool = True, metric: TaskMetric | None = None, cluster: Cluster | None = None
              ) -> tuple[Fallback, Sensitivity | None]:
    """Search the fewest layers to move up the ladder (within `formats`, names of the formats the run may write)
    so that every target holds, in the order `rank(gated)` gives (called with the search's session, only when the
    quantized model misses a target); the sensitivity it used, if any, comes back beside the result.

    `targets` may hold METRIC_TARGET, the minimum of `metric` (--metric); with a metric, a search that misses
    keeps the trial it scores best. `cluster`: the models the search may ask for next run ahead on its workers."""
    sensitivity = None
    with GatedModel(model, plan, amax, evaluator.plugins) as gated:
        search = _Search(gated, evaluator, targets, metric)
        start = best = search.trial({})
        if not start.passed:
            sensitivity = rank(gated)
            order = sensitivity.ranking
            with progress(total=None, enabled=show_progress, desc="fallback search", unit="model") as search.bar, \
                    _workers(cluster, model, plan, amax, evaluator, None, metric) as search.ahead:
                best = _shortest_prefix(order, search) or max(search.tried.values(), key=lambda t: t.score)
    if best.passed and best.moved:
        ladders = {node: [gated.own[node], *rungs(plan, node, formats)[:-1]] for node, _ in best.moved}
        offered = {**{n: (p,) for n, p in gated.own.items()}, **ladders}
        with GatedModel(model, plan, amax, evaluator.plugins, offered) as search.gated, \
                progress(total=None, enabled=show_progress, desc="precision ladder", unit="model") as search.bar, \
                _workers(cluster, model, plan, amax, evaluator, offered, metric) as search.ahead:
            best = _climb(best, ladders, gated.own, sensitivity.ranking, search)
    elif not best.passed:
        logger.warning("the targets (%s) are not met even with all %d quantized layers in float; keeping the best "
                       "model found", ", ".join(f"{m}={v:g}" for m, v in targets.items()), len(plan.quantized_nodes))
    moved = {node: NodePrecision(plan.precision.nodes[node].op, p, _reason(node, p, gated.own[node], sensitivity,
                                                                             targets), pinned=True)
             for node, p in best.moved}
    trials = [{"moved": dict(t.moved), "passed": t.passed, **t.summary()} for t in search.tried.values()]
    evaluations = len(search.tried) + (sensitivity.evaluations if sensitivity else 0)  # the ranking's count too
    return Fallback(plan.with_precisions(moved), moved, targets, start.summary(), best.summary(), best.passed,
                    evaluations, trials), sensitivity


def _workers(cluster: Cluster | None, model: onnx.ModelProto, plan: Plan, amax: dict[str, float],
             evaluator: Evaluator, offered: Mapping[str, Sequence[str]] | None, metric: TaskMetric | None
             ) -> contextlib.AbstractContextManager[Workers | None]:
    """The cluster's workers for a phase of the search (its gated model offering `offered`: node -> precisions,
    None: each node its own); None without a cluster."""
    return contextlib.nullcontext() if cluster is None else Workers(cluster, model, plan, amax, evaluator, offered,
                                                                     metric)


class _Search:
    """The trials of one search: each assignment of layers to rungs evaluated once, as a gate setting of a session;
    with workers (`ahead`), the ones it may ask for next evaluated there ahead of time (`prefetch`)."""

    def __init__(self, gated: GatedModel, evaluator: Evaluator, targets: dict[str, float], metric: TaskMetric | None):
        self.gated, self.evaluator, self.metric = gated, evaluator, metric
        self.targets = {m: v for m, v in targets.items() if m != METRIC_TARGET}
        self.minimum = targets.get(METRIC_TARGET)
        self.tried: dict[frozenset, Trial] = {}
        self.ready: dict[frozenset, Trial] = {}  # evaluated ahead, not asked for yet
        self.bar = None  # the search's progress bar, once there is a search
        self.ahead: Workers | None = None

    @property
    def width(self) -> int:
        """How many trials run at once."""
        return self.ahead.width if self.ahead is not None else 1

    def trial(self, moved: Mapping[str, str]) -> Trial:
        key = frozenset(moved.items())
        if key not in self.tried:
            found = self.ready.pop(key, None)
            if found is None:
                found = self._trial(moved, *evaluate(self.evaluator, self.gated, {**self.gated.own, **moved},
                                                     _name(moved), self.metric))
            self.tried[key] = found
            if self.bar is not None:
                self.bar.update(1)
        return self.tried[key]

    def prefetch(self, candidates: Sequence[Mapping[str, str]]) -> None:
        """Evaluate on the workers, all at once, the candidates not evaluated yet (nothing without workers, or for
        one: the search evaluates it when it asks)."""
        todo = {key: m for key, m in ((frozenset(m.items()), m) for m in candidates)
                if key not in self.tried and key not in self.ready}
        if self.ahead is None or len(todo) < 2:
            return
        moves = list(todo.values())
        results = self.ahead.evaluate([{**self.gated.own, **m} for m in moves], [_name(m) for m in moves])
        for (key, moved), (ev, value) in zip(todo.items(), results):
            self.ready[key] = self._trial(moved, ev, value)

    def _trial(self, moved: Mapping[str, str], ev: EvaluationResult, value: float) -> Trial:
        checks = check_thresholds(ev.outputs, ev.accuracy, self.targets, "--target") if self.targets else []
        if self.minimum is not None:
            checks.append(ThresholdCheck(METRIC_TARGET, TASK, value, self.minimum))
        return Trial(tuple(moved.items()), ev, checks, value)


def _name(moved: Mapping[str, str]) -> str:
    return f"{len(moved)} moved"


def _shortest_prefix(order: list[str], search: _Search) -> Trial | None:
    """The shortest prefix of `order` whose trial (the prefix in FP32) passes (doubling, then bisection); None if
    even all fail. With workers, the next `search.width` doubling prefixes, or the bisection's next levels, run
    ahead."""
    def prefix(k: int) -> dict[str, str]:
        return dict.fromkeys(order[:k], precision.FP32)

    doubling = sorted({min(2 ** i, len(order)) for i in range(len(order).bit_length() + 1)})
    lo, k = 0, 1  # prefixes of length <= lo fail
    while True:
        k = min(k, len(order))
        search.prefetch([prefix(j) for j in doubling[doubling.index(k):][:search.width]])
        if search.trial(prefix(k)).passed:
            break
        if k == len(order):
            return None
        lo, k = k, 2 * k
    hi = k  # passes
    while hi - lo > 1:
        search.prefetch([prefix(m) for m in _bisections(lo, hi, search.width)])
        mid = (lo + hi) // 2
        if search.trial(prefix(mid)).passed:
            hi = mid
        else:
            lo = mid
    return search.trial(prefix(hi))


def _bisections(lo: int, hi: int, count: int) -> list[int]:
    """The lengths a bisection of (lo, hi) may try next, whole levels of its tree, at most `count` of them."""
    level, mids = [(lo, hi)], []
    while level and len(mids) + len(level) <= count:
        mids += [(a + b) // 2 for a, b in level]
        level = [part for a, b in level for part in ((a, (a + b) // 2), ((a + b) // 2, b)) if part[1] - part[0] > 1]
    return mids


def _climb(best: Trial, ladders: dict[str, list[str]], own: dict[str, str], ranking: list[str],
           search: _Search) -> Trial:
    """Each layer `best` holds in float, least damaging first, at the lowest rung of its ladder (its own format
    first) where the targets still hold; FP32 where none does. With workers, a layer's rungs run at once."""
    moved = dict(best.moved)
    for node in sorted(moved, key=ranking.index, reverse=True):
        candidates = [{n: p for n, p in {**moved, node: rung}.items() if p != own[n]} for rung in ladders[node]]
        search.prefetch(candidates[:search.width])
        for candidate in candidates:
            if search.trial(candidate).passed:
                moved = candidate
                break
    return search.trial(moved)


def _reason(node: str, rung: str, own: str, sensitivity: Sensitivity, targets: dict[str, float]) -> str:
    rank = sensitivity.ranking.index(node)
    layer = sensitivity.layers[rank]
    goal = " ".join(f"{m}={v:g}" for m, v in targets.items())
    return (f"{own} -> {rung} for --target {goal}: the lowest rung that meets it; sensitivity rank {rank + 1}, "
            f"output SNR {layer.alone_snr_db:.1f} dB with only this layer in {own}")
