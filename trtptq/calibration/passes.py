"""Pass planning: which tensors one run of the model may expose, under a memory budget.

Sizes come from real shapes: the first batch's input shapes are written into
the graph and ONNX shape inference (with data propagation through
Shape/Gather/Reshape chains) gives every tensor's shape for that batch.
Reading the graph as declared instead counts each dynamic dimension as 1, so
a transformer's attention at sequence length 384 looks 384 x 384 times
smaller than it is and no budget ever splits a pass.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence

import numpy as np
import onnx

from trtptq.core.model import skeleton

logger = logging.getLogger(__name__)


def tensor_bytes(model: onnx.ModelProto, names: Sequence[str], feed: Mapping[str, np.ndarray]) -> dict[str, int]:
    """Bytes of each named tensor for one batch shaped like `feed` (input name -> array).

    Where inference leaves a tensor's shape open (a data-dependent op, a
    Slice whose end is computed), the estimate errs high: each unknown
    dimension counts as the largest dimension of the feed's arrays, and a
    tensor of unknown rank as large as the largest tensor of known size.
    """
    infos = _inferred(model, {name: a.shape for name, a in feed.items()})
    largest_dim = max((d for a in feed.values() for d in a.shape), default=1)
    sizes, open_rank = {}, []
    for name in names:
        t = infos[name].type.tensor_type if name in infos else None
        if t is None or not t.HasField("shape"):
            open_rank.append(name)
            continue
        dims = [d.dim_value if d.HasField("dim_value") else largest_dim for d in t.shape.dim]
        sizes[name] = math.prod(dims) * _itemsize(t.elem_type)
    if open_rank:
        largest = max((_known_bytes(vi) for vi in infos.values()), default=0)
        sizes.update(dict.fromkeys(open_rank, max(largest, 1)))
    return {name: sizes[name] for name in names}


def split_passes(sizes: Mapping[str, int], budget: int) -> list[list[str]]:
    """Greedy groups of tensors whose bytes (for one batch) fit the budget; a lone oversized tensor gets its own pass."""
    groups: list[list[str]] = [[]]
    used = 0
    for name, size in sizes.items():
        if groups[-1] and used + size > budget:
            groups.append([])
            used = 0
        groups[-1].append(name)
        used += size
    return [g for g in groups if g]


def largest_pass(sizes: Mapping[str, int], budget: int) -> int:
    """Bytes the largest of `split_passes`'s passes holds: what a collection under `budget` holds at once."""
    return max((sum(sizes[name] for name in group) for group in split_passes(sizes, budget)), default=0)


def plan_passes(model: onnx.ModelProto, names: Sequence[str], feed: Mapping[str, np.ndarray],
                budget: int) -> list[list[str]]:
    """The passes that expose `names` with at most `budget` bytes of them alive per batch shaped like `feed`."""
    return split_passes(tensor_bytes(model, names, feed), budget)


def with_outputs(model: onnx.ModelProto, names: Sequence[str]) -> onnx.ModelProto:
    """A copy of `model` whose outputs are exactly `names` (ONNX Runtime keeps them all alive)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    del out.graph.output[:]
    out.graph.output.extend(onnx.helper.make_empty_tensor_value_info(n) for n in names)
    return out


def _inferred(model: onnx.ModelProto, shapes: Mapping[str, tuple[int, ...]]) -> dict[str, onnx.ValueInfoProto]:
    """Every tensor's inferred type with the inputs fixed to `shapes`.

    Inference runs on the model's skeleton (`core.model.skeleton`: weights
    without their values, shape constants with them), so it is fast and stays
    far under protobuf's 2 GB limit for models of any size: no copy of the
    weights, no temp file.
    """
    bones = skeleton(model)
    del bones.graph.value_info[:]  # shapes recorded for other inputs would pin the inference
    for vi in bones.graph.input:
        if vi.name in shapes:
            dims = vi.type.tensor_type.shape.dim
            del dims[:]
            for d in shapes[vi.name]:
                dims.add().dim_value = d
    try:
        inferred = onnx.shape_inference.infer_shapes(bones, data_prop=True)
    except Exception as e:  # noqa: BLE001 - estimates only; the budget still holds with conservative sizes
        logger.warning("shape inference failed (%s: %s); --memory-budget plans passes from "
                                            "estimated tensor sizes.", type(e).__name__, str(e).split("\n")[0])
        inferred = bones
    return {vi.name: vi for vi in [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]}


def _itemsize(elem_type: int) -> int:
    """Bytes per element; 4 (float32) where the type is unknown."""
    return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(elem_type)).itemsize if elem_type else 4


def _known_bytes(vi: onnx.ValueInfoProto) -> int:
    t = vi.type.tensor_type
    if not t.HasField("shape") or not all(d.HasField("dim_value") for d in t.shape.dim):
        return 0
    return math.prod(d.dim_value for d in t.shape.dim) * _itemsize(t.elem_type)
