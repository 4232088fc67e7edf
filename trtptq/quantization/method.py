"""`--method auto`: every method's ranges from one histogram collection, mixed per tensor, the best model kept.

Each quantized tensor takes the method whose range gives its consumer layers
the least local error (`local.local_snr`: all layers, all methods, one run).
That per-tensor mix and each single method's ranges are then scored on the
model's outputs against FP32, and the best is kept, so auto is never worse
than the best single method on the scoring samples. A candidate whose layers'
local noise adds up to HOPELESS times the best candidate's (10 dB worse) is
not scored: that is where the time would go, and it cannot win.
"""

from __future__ import annotations

from dataclasses import dataclass

import onnx

from trtptq.data import Batches
from trtptq.evaluation.evaluator import Evaluator
from trtptq.plugins import BUILTIN, Plugins
from trtptq.quantization.local import local_snr, noise, small_batches
from trtptq.quantization.qdq import Plan, quantized_model

PER_TENSOR = "per-tensor"  # the candidate whose every tensor has its own method
HOPELESS = 10.0  # a candidate whose layers' summed local noise is this many times the best's is not scored
LOCAL_SAMPLES = 16  # samples the local errors are measured on: per-element statistics over whole layers settle fast


@dataclass
class MethodChoice:
    method: str  # a method name, or PER_TENSOR
    amax: dict[str, float]
    scores: dict[str, float | None]  # candidate -> mean output SNR (dB) vs FP32; None: hopeless, not scored
    per_tensor: dict[str, str]  # tensor -> the method the per-tensor candidate gave it


def per_tensor_methods(local: dict[str, dict[str, float]], plan: Plan, methods: list[str]) -> dict[str, str]:
    """tensor -> the method whose range leaves the least summed noise at the tensor's consumers (first on ties)."""
    return {t: min(methods, key=lambda m: sum(noise(local[c][m]) for c in consumers if c in local))
            for t, consumers in plan.activations.items()}


def choose_method(model: onnx.ModelProto, plan: Plan, by_method: dict[str, dict[str, float]], batches: Batches,
                  samples: int, memory_budget: int, show_progress: bool = False,
                  plugins: Plugins = BUILTIN) -> MethodChoice:
    """Score each method's ranges and the per-tensor mix on the first `samples` samples; keep the best.

    No labels needed: the FP32 model is the reference, as in `trtptq compare`; it
    runs once, and every candidate runs in real batches against it. Candidates
    with identical ranges are scored once.
    """
    methods = list(by_method)
    limit = min(samples, batches.num_samples or samples)
    with Evaluator(model, batches.source, num_samples=limit, plugins=plugins) as evaluator:
        local = local_snr(model, plan, by_method, plan.int8_nodes,
                          small_batches(evaluator.batches(), LOCAL_SAMPLES), memory_budget, show_progress, plugins)
        chosen = per_tensor_methods(local, plan, methods)
        candidates = {**by_method, PER_TENSOR: {t: by_method[m][t] for t, m in chosen.items()}}
        predicted = {m: sum(noise(per[m]) for per in local.values()) for m in methods}
        floor = min(predicted.values())
        scores: dict[str, float | None] = {}
        for name, amax in candidates.items():
            same = next((other for other in scores if candidates[other] == amax), None)
            if same is not None:
                scores[name] = scores[same]
            elif name == PER_TENSOR or predicted[name] <= HOPELESS * floor:
                scores[name] = round(evaluator.evaluate(quantized_model(model, plan, amax), name).mean_snr_db, 3)
            else:
                scores[name] = None  # hopeless: not scored
    scored = {name: db for name, db in scores.items() if db is not None}
    best = max(scored, key=scored.get)  # dict order breaks ties: a single method before the mix
    return MethodChoice(best, candidates[best], scores, chosen)
