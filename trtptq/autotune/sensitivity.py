"""Per-layer sensitivity: how much quantization hurts at each quantized layer (in its format: INT8, FP8, INT4),
ranked, so the worst can move up the precision ladder.

Three measures per quantized layer (ONNX node), all against the cached FP32 outputs:
- local: the layer's own output with quantized inputs vs FP32, fed FP32 activations
  (every layer in one run, `local.local_snr`);
- alone: the model's output SNR with only that layer quantized (its damage,
  with nothing else to blame);
- gain: the output SNR won by keeping only that layer in float, all others quantized
  (what a fallback of it buys in the real mix).
The ranking is by damage alone (lowest SNR first): noise powers of separate
layers roughly add, so the layers that do most damage alone are the ones a
fallback should try first. Both full-model measures cost one evaluation per
layer, on `samples` samples (the FP32 reference runs once).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field

import onnx

from trtptq.autotune.gated import GatedModel
from trtptq.autotune.local import first_samples, local_snr
from trtptq.autotune.variants import output_snrs
from trtptq.calibration.cluster import Cluster
from trtptq.core.fileio import write_text
from trtptq.core.options import check_count
from trtptq.evaluation.evaluator import Evaluator
from trtptq.quantization.qdq import Plan

DEFAULT_SAMPLES = 32  # evaluation samples each single-layer variant runs on


@dataclass
class SensitivityOptions:
    samples: int = DEFAULT_SAMPLES  # evaluation samples the per-layer variants run on
    gain: bool = True  # also measure each layer's gain in float (one more evaluation per layer)
    show_progress: bool = True

    def __post_init__(self) -> None:
        check_count("--sensitivity-samples", self.samples, "sample")


@dataclass
class LayerSensitivity:
    node: str
    op: str
    precision: str  # its format (INT8, FP8, INT4)
    local_snr_db: float  # the layer's output, quantized inputs vs FP32, fed FP32 activations
    alone_snr_db: float  # model output SNR with only this layer quantized
    gain_db: float | None  # model output SNR gained by keeping only this layer in float (None: not measured)


@dataclass
class Sensitivity:
    """Every quantized layer, most damaging first."""

    model: str
    int8_snr_db: float  # the whole quantized model's output SNR (EvaluationResult.snr_db) on the same samples
    num_samples: int
    evaluations: int  # full-model evaluations it took (the FP32 reference not counted)
    layers: list[LayerSensitivity] = field(default_factory=list)

    @property
    def ranking(self) -> list[str]:
        return [layer.node for layer in self.layers]

    def to_dict(self) -> dict:
        return asdict(self)

    def save(self, path: str | os.PathLike) -> None:
        write_text(path, json.dumps(self.to_dict(), indent=2) + "\n")


def analyze(model: onnx.ModelProto, plan: Plan, amax: dict[str, float], evaluator: Evaluator,
            options: SensitivityOptions | None = None, name: str = "", gated: GatedModel | None = None,
            cluster: Cluster | None = None) -> Sensitivity:
    """Rank `plan`'s quantized layers by the damage their format does there, measured on `evaluator`'s data; `gated`: an open
    session of the same plan and ranges to reuse (the fallback search's), else one is made; `cluster`: the full-model
    variants spread over its workers instead (`variants.output_snrs`), with the same numbers. Every run takes one of
    the evaluator's batches: their size sets what it holds (`budget.held`)."""
    opts = options or SensitivityOptions()
    nodes = plan.quantized_nodes
    local = local_snr(model, plan, {"own": amax}, nodes,
                      first_samples(evaluator.batches(), opts.samples, evaluator.data.fixed_batch), opts.show_progress,
                      evaluator.plugins)
    own = {node: plan.precision.nodes[node].precision for node in nodes}
    alone = [{node: own[node]} for node in nodes]
    others = [{n: p for n, p in own.items() if n != node} for node in nodes] if opts.gain else []
    full, *snrs = output_snrs(model, plan, amax, evaluator, [own, *alone, *others], gated, cluster, opts.show_progress)
    gains = [snr - full for snr in snrs[len(nodes):]] or [None] * len(nodes)
    layers = [LayerSensitivity(node, plan.precision.nodes[node].op, own[node], round(local[node]["own"], 3),
                               round(snr, 3), None if gain is None else round(gain, 3))
              for node, snr, gain in zip(nodes, snrs, gains)]
    layers.sort(key=lambda layer: (layer.alone_snr_db, -(layer.gain_db or 0.0), layer.local_snr_db))
    return Sensitivity(name or model.graph.name, round(full, 3), evaluator.num_samples, 1 + len(alone) + len(others),
                       layers)
