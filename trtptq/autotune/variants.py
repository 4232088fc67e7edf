"""Many variants of one gated model evaluated: in this process on one session, or spread over a Ray cluster.

Sensitivity ranks a plan's layers with one evaluation per variant (a mix of
precisions, `gated.GatedModel`: a feed of gates, not a model). On a cluster
(`calibration.cluster`: --workers N, --ray-address), the variants are cut
into one contiguous chunk per worker, and each task opens the evaluator (its
FP32 reference run once) and the gated session once and evaluates its chunk.
Only the model, plan, ranges and evaluation batches (once, through Ray's
object store: the batches are the data's source, read where each task runs),
the variants (node -> precision) and the SNRs travel. Each task runs the same
session on the same batches as one process, so the SNRs are the same numbers.
--target's search asks for a few variants at a time, each few chosen from the
last results: `Workers` keeps one evaluator and gated session per worker open
(a Ray actor) across its requests, and returns each variant's whole evaluation.
"""

from __future__ import annotations

import contextlib
import pathlib
from collections.abc import Mapping, Sequence

import onnx

from trtptq.autotune.gated import GatedModel
from trtptq.autotune.metric import TaskMetric, task_metric
from trtptq.calibration.cluster import Cluster, connected, map_merge, user_errors, workers
from trtptq.core.log import progress
from trtptq.data import Batches
from trtptq.evaluation.evaluator import EvaluationResult, Evaluator
from trtptq.plugins import Plugins
from trtptq.quantization.qdq import Plan

Variant = Mapping[str, str]  # node -> its precision (a format name, FP16 or FP32); nodes not named stay in float


def output_snrs(model: onnx.ModelProto, plan: Plan, amax: Mapping[str, float], evaluator: Evaluator,
                variants: Sequence[Variant], gated: GatedModel | None = None, cluster: Cluster | None = None,
                show_progress: bool = False) -> list[float]:
    """Each variant's output SNR (`EvaluationResult.snr_db`) on `evaluator`'s data, in order: on `cluster`'s
    workers, else on `gated` (an open session of the same plan and ranges) or one opened here."""
    if cluster is not None:
        def chunk(k: int, n: int) -> tuple[list[Variant]]:
            return list(variants[k * len(variants) // n:(k + 1) * len(variants) // n]),

        shared = (model, plan, dict(amax), evaluator.data, evaluator.memory_budget, evaluator.plugins)
        return map_merge(cluster, _chunk_snrs, shared, chunk, _joined)
    with (contextlib.nullcontext(gated) if gated else GatedModel(model, plan, amax, evaluator.plugins)) as gated, \
            progress(total=len(variants), enabled=show_progress, desc="layer sensitivity", unit="model") as bar:
        snrs = []
        for k, variant in enumerate(variants):
            snrs.append(evaluator.evaluate(gated.variant(variant, f"variant {k}")).snr_db)
            bar.update(1)
        return snrs


def _chunk_snrs(model: onnx.ModelProto, plan: Plan, amax: dict[str, float], batches: Batches, memory_budget: int,
                plugins: Plugins, variants: list[Variant]) -> list[float]:
    """One task: its chunk of the variants on an evaluator and a gated session of its own (none for no variant)."""
    if not variants:
        return []
    with Evaluator(model, batches, memory_budget=memory_budget, plugins=plugins) as evaluator:
        return output_snrs(model, plan, amax, evaluator, variants)


def _joined(first: list[float], then: list[float]) -> list[float]:
    """Two neighbouring chunks' SNRs as one list (the merge tree keeps the chunks in order)."""
    return first + then


def evaluate(evaluator: Evaluator, gated: GatedModel, variant: Variant, name: str,
             metric: TaskMetric | None = None) -> tuple[EvaluationResult, float]:
    """`variant` evaluated on `evaluator`'s data: (its evaluation, its score: `metric`'s value, else output SNR)."""
    score = metric.start() if metric else None
    ev = evaluator.evaluate(gated.variant(variant, name), observe=score.update if score else None)
    return ev, score.value() if score else ev.snr_db


class _Worker:
    """One worker's evaluator and gated session, open for as long as the worker lives (a Ray actor)."""

    def __init__(self, model: onnx.ModelProto, plan: Plan, amax: dict[str, float], batches: Batches,
                 memory_budget: int, plugins: Plugins, rungs: dict[str, tuple[str, ...]] | None, metric: str | None):
        self.evaluator = Evaluator(model, batches, memory_budget=memory_budget, plugins=plugins)
        self.gated = GatedModel(model, plan, amax, plugins, rungs).__enter__()
        self.metric = task_metric(metric) if metric else None  # rebuilt here: a user's function travels as its path

    def evaluate(self, variant: Variant, name: str) -> tuple[EvaluationResult, float]:
        return evaluate(self.evaluator, self.gated, variant, name, self.metric)


def _portable(metric: TaskMetric | None) -> str | None:
    """`metric` as a worker rebuilds it: its spec, a user function's file made absolute (workers do not share the
    driver's working directory)."""
    if metric is None or metric.fn is None:
        return metric and metric.spec
    path, _, function = metric.spec.rpartition(":")
    return f"{pathlib.Path(path).resolve()}:{function}"


class Workers:
    """Variants of one gated model (`rungs` as `GatedModel` takes them, None its default) evaluated on
    `cluster`'s workers, as many at once as it has: the workers start when variants are first asked for, and keep
    their evaluator and session until `close`. The same sessions on the same batches as one process: the same
    evaluations."""

    def __init__(self, cluster: Cluster, model: onnx.ModelProto, plan: Plan, amax: Mapping[str, float],
                 evaluator: Evaluator, rungs: Mapping[str, Sequence[str]] | None, metric: TaskMetric | None = None):
        self._stack = contextlib.ExitStack()
        self._ray = self._stack.enter_context(connected(cluster))
        self.width = workers(self._ray, cluster)
        self._shared = (model, plan, dict(amax), evaluator.data, evaluator.memory_budget, evaluator.plugins,
                        None if rungs is None else {n: tuple(ps) for n, ps in rungs.items()}, _portable(metric))
        self._actors: list = []
        self._pool = None

    def evaluate(self, variants: Sequence[Variant], names: Sequence[str]) -> list[tuple[EvaluationResult, float]]:
        """Each variant's (evaluation, score), in order, at most `width` at a time."""
        ray = self._ray
        if self._pool is None:
            from ray.util import ActorPool

            refs = [ray.put(value) for value in self._shared]
            actor = ray.remote(num_cpus=1)(_Worker)
            self._actors = [actor.remote(*refs) for _ in range(self.width)]
            self._pool = ActorPool(self._actors)
        with user_errors(ray):
            return list(self._pool.map(lambda worker, job: worker.evaluate.remote(*job), list(zip(variants, names))))

    def close(self) -> None:
        for worker in self._actors:
            self._ray.kill(worker)
        self._actors, self._pool = [], None
        self._stack.close()

    def __enter__(self) -> Workers:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
