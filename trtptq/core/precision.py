"""The precision plan: each decided node's precision (INT8 / FP8 / INT4 / FP16 / FP32) and why, inside the ONNX file.

INT8 and FP8 nodes take quantized inputs and weights; an INT4 node has INT4
weights and float activations (weight-only, W4A16).

The quantize stage writes it (INT8 nodes, nodes kept in float), the FP16
conversion updates it (FP16, kept FP32), and whoever reads the model later
(the engine build report, compare, report) gets it back with `read_plan`,
without importing the stages that wrote it. It travels as JSON in the model's
`metadata_props` under `METADATA_KEY`, so it survives copying the file.
Nodes absent from the plan were not decided: they run in the model's types.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict, dataclass, field

import onnx

from trtptq.core.errors import ModelError

METADATA_KEY = "trtptq.precision_plan"
FORMAT_VERSION = 1
INT8, FP8, INT4, FP16, FP32 = "INT8", "FP8", "INT4", "FP16", "FP32"
QUANTIZED = (INT8, FP8, INT4)  # the names of trtptq.core.formats.FORMATS
PRECISIONS = (*QUANTIZED, FP16, FP32)


@dataclass(frozen=True)
class NodePrecision:
    op: str
    precision: str  # one of PRECISIONS
    reason: str = ""  # why; empty for a plain FP16 conversion
    pinned: bool = False  # chosen for this node (--layer-precision, --target's ladder): later stages keep it

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")

    def __str__(self) -> str:
        return f"{self.precision}: {self.reason}" if self.reason else self.precision


@dataclass
class PrecisionPlan:
    """node name -> its precision and the reason, in graph order."""

    nodes: dict[str, NodePrecision] = field(default_factory=dict)

    def counts(self) -> dict[str, int]:
        """Nodes per precision, every precision listed (0 where none)."""
        found = Counter(p.precision for p in self.nodes.values())
        return {p: found[p] for p in PRECISIONS}

    def kept_float(self) -> dict[str, NodePrecision]:
        """The nodes deliberately left in float (excluded, sensitive, plugin ops, ...): every float node with a reason."""
        return {name: p for name, p in self.nodes.items() if p.precision not in QUANTIZED and p.reason}

    def to_json(self) -> str:
        return json.dumps({"version": FORMAT_VERSION, "nodes": {k: asdict(v) for k, v in self.nodes.items()}},
                          separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> PrecisionPlan:
        try:
            body = json.loads(text)
            return cls({name: NodePrecision(**entry) for name, entry in body["nodes"].items()})
        except (ValueError, TypeError, KeyError, AttributeError) as e:
            raise ModelError(f"the model's {METADATA_KEY} metadata is not a trtptq precision plan ({e}); "
                             "re-run `trtptq quantize` on the FP32 model.") from None


def read_plan(model: onnx.ModelProto) -> PrecisionPlan | None:
    """The plan stored in `model`, or None for a model trtptq did not write."""
    text = next((p.value for p in model.metadata_props if p.key == METADATA_KEY), None)
    return None if text is None else PrecisionPlan.from_json(text)


def write_plan(model: onnx.ModelProto, plan: PrecisionPlan) -> onnx.ModelProto:
    """Store `plan` in `model`'s metadata (replacing any older plan), in place; returns `model`."""
    others = [(p.key, p.value) for p in model.metadata_props if p.key != METADATA_KEY]
    del model.metadata_props[:]
    for key, value in [*others, (METADATA_KEY, plan.to_json())]:
        model.metadata_props.add(key=key, value=value)
    return model
