"""The output SNR of many variants of one gated model: in this process on one session, or spread over a Ray cluster.

Sensitivity ranks a plan's layers with one evaluation per variant (a mix of
precisions, `gated.GatedModel`: a feed of gates, not a model). On a cluster
(`calibration.cluster`: --workers N, --ray-address), the variants are cut
into one contiguous chunk per worker, and each task opens the evaluator (its
FP32 reference run once) and the gated session once and evaluates its chunk.
Only the model, plan, ranges and evaluation batches (once, through Ray's
object store: the batches are the data's source, read where each task runs),
the variants (node -> precision) and the SNRs travel. Each task runs the same
session on the same batches as one process, so the SNRs are the same numbers.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence

import onnx

from trtptq.autotune.gated import GatedModel
from trtptq.calibration.cluster import Cluster, map_merge
from trtptq.core.log import progress
from trtptq.data import Batches
from trtptq.evaluation.evaluator import Evaluator
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
