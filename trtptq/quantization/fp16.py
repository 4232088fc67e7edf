"""FP16 mixed precision for strongly typed TensorRT (11, TensorRT-RTX): precision lives in the ONNX types.

The graph is converted to FP16 (initializers, casts) by onnxconverter-common,
except what must stay FP32: the model's I/O types, numerically sensitive ops
(reductions feeding normalization, Softmax/Exp/Pow, LayerNorm), ops fed by
constants beyond the FP16 range, plugin ops, and whatever the user names. Q/DQ
scales become FP16 as well, so DequantizeLinear feeds FP16 Convs/MatMuls
directly (QuantizeLinear with FP16 scales needs opset 19).
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import numpy_helper

from trtptq.core.errors import ModelError
from trtptq.core.model import ensure_opset
from trtptq.plugins import is_plugin_op

SENSITIVE_OPS = ("LayerNormalization", "ReduceMean", "ReduceSum", "ReduceSumSquare", "ReduceL2", "ReduceLogSumExp",
                 "Pow", "Sqrt", "Exp", "Softmax", "LogSoftmax")
FP16_MAX = 65504.0
QDQ_FP16_OPSET = 19


@dataclass
class FP16Result:
    model: onnx.ModelProto
    kept_fp32: dict[str, str]  # node -> why it stays FP32


def _with_node_names(model: onnx.ModelProto) -> onnx.ModelProto:
    """The converter keeps nodes in FP32 by name: give unnamed nodes one (on a copy)."""
    if all(n.name for n in model.graph.node):
        return model
    out = onnx.ModelProto()
    out.CopyFrom(model)
    taken = {n.name for n in out.graph.node}
    for i, n in enumerate(out.graph.node):
        if not n.name:
            n.name = next(c for c in (f"{n.op_type}_{i}", *(f"{n.op_type}_{i}_{k}" for k in range(1, 1000))) if c not in taken)
            taken.add(n.name)
    return out


def _unshare_initializers(model: onnx.ModelProto, kept: set[str]) -> onnx.ModelProto:
    """Give FP32-kept nodes their own copy of float initializers they share with converted nodes.

    The converter types a shared initializer once, so one side would see the wrong type.
    """
    float_inits = {i.name: i for i in model.graph.initializer if i.data_type == onnx.TensorProto.FLOAT}
    users: dict[str, set[bool]] = {}
    for n in model.graph.node:
        for name in n.input:
            if name in float_inits:
                users.setdefault(name, set()).add(n.name in kept)
    shared = {name for name, sides in users.items() if len(sides) == 2}
    if not shared:
        return model
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for name in sorted(shared):
        copy = out.graph.initializer.add()
        copy.CopyFrom(float_inits[name])
        copy.name = f"{name}_fp32"
    for n in out.graph.node:
        if n.name in kept:
            for k, name in enumerate(n.input):
                if name in shared:
                    n.input[k] = f"{name}_fp32"
    return out


def to_fp16(model: onnx.ModelProto, keep_fp32: tuple[str, ...] = (), keep_sensitive: bool = True) -> FP16Result:
    """Convert to FP16 (I/O stays FP32); `keep_fp32` holds node names, globs or op types kept in FP32."""
    from onnxconverter_common import float16

    if any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in model.graph.node):
        model = ensure_opset(model, QDQ_FP16_OPSET)
    model = _with_node_names(model)
    big = {i.name for i in model.graph.initializer
           if i.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE)
           and np.abs(numpy_helper.to_array(i)).max(initial=0) > FP16_MAX}
    kept: dict[str, str] = {}
    for n in model.graph.node:
        if is_plugin_op(n.domain):
            kept[n.name] = "plugin op"
        elif n.op_type in keep_fp32 or any(fnmatch.fnmatchcase(n.name, p) for p in keep_fp32):
            kept[n.name] = "kept by the user"
        elif keep_sensitive and n.op_type in SENSITIVE_OPS:
            kept[n.name] = f"{n.op_type} is sensitive to FP16 range/precision"
        elif big & set(n.input):
            kept[n.name] = "uses constants beyond the FP16 range"
        elif n.op_type == "Cast" and any(a.name == "to" and a.i == onnx.TensorProto.FLOAT for a in n.attribute):
            # The converter leaves explicit casts to FP32 alone; kept, their consumers get a cast to FP16.
            kept[n.name] = "explicit Cast to FP32"
    model = _unshare_initializers(model, set(kept))
    try:
        converted = float16.convert_float_to_float16(
            model, keep_io_types=True, max_finite_val=FP16_MAX, min_positive_val=2.0**-24,
            op_block_list=list(float16.DEFAULT_OP_BLOCK_LIST), node_block_list=list(kept))
    except Exception as e:  # noqa: BLE001 - the converter raises plain errors for unsupported graphs
        raise ModelError(f"FP16 conversion failed: {e}") from None
    return FP16Result(converted, kept)
