"""`--method auto`: every method's ranges from one histogram collection, mixed per tensor, the best model kept.

Each quantized tensor takes the method whose range gives its consumer layers
the least local error (`local.local_snr`: all layers, all methods, one run).
That per-tensor mix and each single method's ranges are then scored on the
model's outputs against FP32, and the best is kept, so auto is never worse
than the best single method on the scoring samples.
"""

from __future__ import annotations

from dataclasses import dataclass

import onnx

from trtptq.data import Batches
from trtptq.evaluation.evaluator import Evaluator
from trtptq.quantization.local import local_snr, noise
from trtptq.quantization.qdq import Plan, quantized_model

PER_TENSOR = "per-tensor"  # the candidate whose every tensor has its own method


@dataclass
class MethodChoice:
    method: str  # a method name, or PER_TENSOR
    amax: dict[str, float]
    scores: dict[str, float]  # candidate -> mean output SNR (dB) vs FP32
    per_tensor: dict[str, str]  # tensor -> the method the per-tensor candidate gave it


def per_tensor_methods(local: dict[str, dict[str, float]], plan: Plan, methods: list[str]) -> dict[str, str]:
    """tensor -> the method whose range leaves the least summed noise at the tensor's consumers (first on ties)."""
    return {t: min(methods, key=lambda m: sum(noise(local[c][m]) for c in consumers if c in local))
            for t, consumers in plan.activations.items()}


def choose_method(model: onnx.ModelProto, plan: Plan, by_method: dict[str, dict[str, float]], batches: Batches,
                  samples: int, memory_budget: int, show_progress: bool = False) -> MethodChoice:
    """Score each method's ranges and the per-tensor mix on the first `samples` samples; keep the best.

    No labels needed: the FP32 model is the reference, as in `trtptq compare`; it
    runs once, and every candidate runs in real batches against it. Candidates
    with identical ranges are scored once.
    """
    methods = list(by_method)
    limit = min(samples, batches.num_samples or samples)
    with Evaluator(model, batches.source, num_samples=limit) as evaluator:
        local = local_snr(model, plan, by_method, plan.int8_nodes, list(evaluator.batches()), memory_budget,
                          show_progress)
        chosen = per_tensor_methods(local, plan, methods)
        candidates = {**by_method, PER_TENSOR: {t: by_method[m][t] for t, m in chosen.items()}}
        scores: dict[str, float] = {}
        for name, amax in candidates.items():
            same = next((other for other in scores if candidates[other] == amax), None)
            scores[name] = scores[same] if same else round(
                evaluator.evaluate(quantized_model(model, plan, amax), name).mean_snr_db, 3)
    best = max(scores, key=scores.get)  # dict order breaks ties: a single method before the mix
    return MethodChoice(best, candidates[best], scores, chosen)
