"""Method choice for `--method auto`: quantize with each method's ranges, keep the one closest to FP32."""

from __future__ import annotations

import onnx

from trtptq.data import Batches
from trtptq.evaluation.evaluator import Evaluator
from trtptq.plugins import BUILTIN, Plugins
from trtptq.quantization.graph import export_graph, import_graph
from trtptq.quantization.qdq import Plan, insert_qdq


def score_methods(proto: onnx.ModelProto, placement: Plan, by_method: dict[str, dict[str, float]],
                  batches: Batches, samples: int, plugins: Plugins = BUILTIN) -> dict[str, float]:
    """Each method's Q/DQ model scored by its mean output SNR (dB) against FP32 on the first `samples` samples.

    No labels needed: the FP32 model is the reference, as in `trtptq compare`;
    it runs once, and every method's model in real batches against it.
    """
    limit = min(samples, batches.num_samples or samples)
    with Evaluator(proto, batches.source, num_samples=limit, plugins=plugins) as evaluator:
        return {method: round(evaluator.evaluate(export_graph(insert_qdq(import_graph(proto), placement, amax), proto),
                                                 method).mean_snr_db, 3)
                for method, amax in by_method.items()}


def choose_method(scores: dict[str, float]) -> str:
    """The best-scoring method; minmax (no clipping) when nothing was scored."""
    return max(scores, key=scores.get) if scores else "minmax"
