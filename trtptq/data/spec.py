"""What a model takes: its input specs, and the feed dicts (with their origin) that data sources yield."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
import onnx

LABEL_KEYS = ("label", "labels")


@dataclass(frozen=True)
class InputSpec:
    """One model input: name, dtype, and dims (int, or str/None where dynamic)."""

    name: str
    dtype: np.dtype
    shape: tuple

    def describe(self) -> str:
        dims = "x".join(str(d) if isinstance(d, int) else (d or "?") for d in self.shape)
        return f"{self.name} ({self.dtype}, {dims})"


def input_specs(model: onnx.ModelProto) -> list[InputSpec]:
    """The graph inputs a user must feed (initializers listed as inputs excluded)."""
    inits = {i.name for i in model.graph.initializer}
    specs = []
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        t = vi.type.tensor_type
        dims = tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in t.shape.dim)
        specs.append(InputSpec(vi.name, np.dtype(onnx.helper.tensor_dtype_to_np_dtype(t.elem_type)), dims))
    return specs


@dataclass
class Feed:
    arrays: dict[str, np.ndarray]
    origin: str


Source = Callable[[], Iterable[Feed]]
