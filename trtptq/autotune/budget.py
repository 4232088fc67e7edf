"""What the search's runs may hold: what the calibration's largest pass held, so that `--method auto`, sensitivity
and `--target` peak near a single-method calibration of the same model and data, however large its activations.

A calibration holds, per pass, one batch of the tensors it exposes (at most
`--memory-budget`). The search's runs expose nothing (local errors are summed
in the graph, metrics stream), so what they hold is one run's working set and
the evaluator's cache of inputs and FP32 outputs. Each run takes as many
samples as fit in that pass's bytes with every tensor of the run counted (an
upper bound on what it holds, whatever the order it frees them in), and the
cache keeps that many bytes in memory (the rest goes to disk).
"""

from __future__ import annotations

from dataclasses import dataclass

import onnx

from trtptq.calibration.passes import largest_pass, tensor_bytes
from trtptq.data import Batches
from trtptq.quantization.qdq import Plan

HELD_FLOOR = 16 * 2**20  # bytes the search may always hold: below this, batches of one cost time and save nothing
# Samples the local errors are measured on, fewest and most: as many as it takes the median quantized activation to
# pass LOCAL_BYTES (about 400,000 float32 values). Whole-layer statistics over large activations settle in a few
# samples (a 480x640 detector: 4, its mix 90 % the same as at 8, its score within 0.1 dB); small or heavy-tailed ones
# need more (a Student-t input of 1024 values a sample read INT8 as fine over 4 samples, INT4 as better over 8).
LOCAL_SAMPLES = (4, 8)
LOCAL_BYTES = 3 * 2**19


@dataclass(frozen=True)
class Held:
    bytes: int  # inputs and FP32 outputs an evaluator keeps in memory
    batch_size: int | None  # samples per run; None: the model's fixed batch
    local_samples: int = LOCAL_SAMPLES[1]  # samples the local errors are measured on


def held(model: onnx.ModelProto, plan: Plan, calibration: Batches, memory_budget: int) -> Held:
    """The search's limits for `plan`'s model, from the first batch of `calibration` (its batches, as collected)."""
    batch = next(iter(calibration))
    tensors = list(dict.fromkeys(t for n in model.graph.node for t in n.output if t))
    sizes = tensor_bytes(model, list(dict.fromkeys([*plan.activations, *tensors])), batch.feed)
    allowed = max(largest_pass({t: sizes[t] for t in plan.activations}, memory_budget), HELD_FLOOR)
    per_sample = max(1, sum(sizes[t] for t in tensors) // batch.size)
    activations = sorted(sizes[t] // batch.size for t in plan.activations) or [0]
    local = min(max(-(-LOCAL_BYTES // max(activations[len(activations) // 2], 1)), LOCAL_SAMPLES[0]), LOCAL_SAMPLES[1])
    return Held(allowed, None if calibration.fixed_batch else max(1, allowed // per_sample), local)
