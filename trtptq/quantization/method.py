"""Method choice for `--method auto`: quantize with each method's ranges, keep the one closest to FP32."""

from __future__ import annotations

import numpy as np
import onnx

from trtptq.data import Batches
from trtptq.evaluation.metrics import ErrorStats
from trtptq.quantization.graph import export_graph, import_graph
from trtptq.quantization.qdq import Plan, insert_qdq
from trtptq.runtime.ort import session


def score_methods(proto: onnx.ModelProto, placement: Plan, by_method: dict[str, dict[str, float]],
                  batches: Batches, samples: int) -> dict[str, float]:
    """Each method's Q/DQ model scored by its mean output SNR (dB) against FP32 on the first `samples` samples.

    No labels needed: the FP32 model is the reference, as in `trtptq compare`.
    """
    feeds, seen = [], 0
    for batch in batches:
        feeds.append(batch.feed)
        seen += batch.size
        if seen >= samples:
            break
    reference = session(proto)
    expected = [reference.run(None, feed) for feed in feeds]
    scores = {}
    for method, amax in by_method.items():
        candidate = session(export_graph(insert_qdq(import_graph(proto), placement, amax), proto), simulate_int8=True)
        stats = [ErrorStats() for _ in expected[0]]
        for feed, ref in zip(feeds, expected):
            for s, r, c in zip(stats, ref, candidate.run(None, feed)):
                s.update(r, c)
        scores[method] = round(float(np.mean([s.result()["snr_db"] for s in stats])), 3)
    return scores


def choose_method(scores: dict[str, float]) -> str:
    """The best-scoring method; minmax (no clipping) when nothing was scored."""
    return max(scores, key=scores.get) if scores else "minmax"
