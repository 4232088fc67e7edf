"""FP16 mixed precision for strongly typed TensorRT (11, TensorRT-RTX): precision lives in the ONNX types.

The graph is converted to FP16 (initializers, casts) by onnxconverter-common,
except what must stay FP32: the model's I/O types, numerically sensitive ops
(reductions feeding normalization, Softmax/Exp/Pow, LayerNorm), ops fed by
constants beyond the FP16 range, plugin ops (unless their plugin's precision
rule allows FP16), and whatever the user names. Q/DQ
scales become FP16 as well, so DequantizeLinear feeds FP16 Convs/MatMuls
directly (QuantizeLinear with FP16 scales needs opset 19). Each node's
outcome goes into the model's precision plan (trtptq.core.precision).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Collection
from dataclasses import dataclass, replace

import numpy as np
import onnx
from onnx import numpy_helper

from trtptq.core import precision
from trtptq.core.errors import ModelError
from trtptq.core.model import QDQ_OPS, ensure_opset, float_tensors, has_qdq, with_node_names, with_weights
from trtptq.core.precision import NodePrecision, PrecisionPlan, read_plan, write_plan
from trtptq.plugins import BUILTIN, FP32, Plugins, is_plugin_op
from trtptq.runtime.plugins import registered

SENSITIVE_OPS = ("LayerNormalization", "ReduceMean", "ReduceSum", "ReduceSumSquare", "ReduceL2", "ReduceLogSumExp",
                 "Pow", "Sqrt", "Exp", "Softmax", "LogSoftmax")
FP16_MAX = 65504.0
QDQ_FP16_OPSET = 19


@dataclass
class FP16Result:
    model: onnx.ModelProto  # carries `plan` in its metadata
    plan: PrecisionPlan  # the model's plan (from quantize, if any) updated: FP16, or kept FP32 and why


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


def to_fp16(model: onnx.ModelProto, keep_fp32: tuple[str, ...] = (), keep_sensitive: bool = True,
            plugins: Plugins = BUILTIN) -> FP16Result:
    """Convert to FP16 (I/O stays FP32); `keep_fp32` holds node names, globs or op types kept in FP32, and so do
    the nodes the precision plan pins to FP32 (a pinned FP16 node converts even where it is a sensitive op).

    A plugin op converts only where its plugin in `plugins` says `precision="fp16"`.

    The model's precision plan (written by quantize; a new one otherwise) is
    updated node by node and stored in the converted model.
    """
    from onnxconverter_common import float16

    before = read_plan(model) or PrecisionPlan()
    if has_qdq(model):
        model = ensure_opset(model, QDQ_FP16_OPSET)
    model = with_node_names(with_weights(model))  # the converter rewrites every weight: it needs their values
    big = {i.name for i in model.graph.initializer
           if i.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE)
           and np.abs(numpy_helper.to_array(i)).max(initial=0) > FP16_MAX}
    kept: dict[str, str] = {}
    for n in model.graph.node:
        plugin = registered(plugins, n.domain, n.op_type)
        chosen = before.nodes.get(n.name)
        chosen = chosen if chosen is not None and chosen.pinned else None  # --layer-precision, --target's ladder
        if chosen is not None and chosen.precision == precision.FP32:
            kept[n.name] = chosen.reason
        elif plugin is not None and plugin.precision == FP32:
            kept[n.name] = f"plugin {n.op_type} stays FP32 (its precision rule)"
        elif plugin is None and is_plugin_op(n.domain):
            kept[n.name] = "plugin op"
        elif n.op_type in keep_fp32 or any(fnmatch.fnmatchcase(n.name, p) for p in keep_fp32):
            kept[n.name] = "kept by the user"
        elif keep_sensitive and n.op_type in SENSITIVE_OPS and chosen is None:
            kept[n.name] = f"{n.op_type} is sensitive to FP16 range/precision"
        elif big & set(n.input):
            kept[n.name] = "uses constants beyond the FP16 range"
        elif n.op_type == "Cast" and any(a.name == "to" and a.i == onnx.TensorProto.FLOAT for a in n.attribute):
            # The converter leaves explicit casts to FP32 alone; kept, their consumers get a cast to FP16.
            kept[n.name] = "explicit Cast to FP32"
    plan = _fp16_plan(model, before, kept, float16.DEFAULT_OP_BLOCK_LIST)
    model = _unshare_initializers(model, set(kept))
    try:
        converted = float16.convert_float_to_float16(
            model, keep_io_types=True, max_finite_val=FP16_MAX, min_positive_val=2.0**-24,
            op_block_list=list(float16.DEFAULT_OP_BLOCK_LIST), node_block_list=list(kept))
    except Exception as e:  # noqa: BLE001 - the converter raises plain errors for unsupported graphs
        raise ModelError(f"FP16 conversion failed: {e}") from None
    _restore_kept_outputs(converted, model, set(kept))
    return FP16Result(write_plan(converted, plan), plan)


def _restore_kept_outputs(converted: onnx.ModelProto, model: onnx.ModelProto, kept: set[str]) -> None:
    """Graph outputs written by a kept node stay as it wrote them, in place.

    The converter casts a kept node's graph outputs to FP16 even with
    keep_io_types (EfficientNMS_TRT's boxes and scores came out FP16): the
    Cast is dropped and the output's type restored.
    """
    types = {o.name: o.type.tensor_type.elem_type for o in model.graph.output}
    producers = {o: n for n in converted.graph.node for o in n.output}
    for out in converted.graph.output:
        cast = producers.get(out.name)
        if out.type.tensor_type.elem_type == types[out.name] or cast is None or cast.op_type != "Cast":
            continue
        source = producers.get(cast.input[0])
        if source is None or source.name not in kept:
            continue
        source.output[list(source.output).index(cast.input[0])] = out.name
        converted.graph.node.remove(cast)
        out.type.tensor_type.elem_type = types[out.name]


def _fp16_plan(model: onnx.ModelProto, before: PrecisionPlan, kept: dict[str, str],
               blocked_ops: Collection[str]) -> PrecisionPlan:
    """The model's plan after conversion: quantized nodes keep their format, kept and blocked nodes FP32, float nodes FP16.

    A node the quantizer left in float and the conversion makes FP16 keeps the quantizer's reason ("not quantized: ...").
    Nodes with no float output (shape arithmetic) have no float precision and are not listed.
    """
    floats = float_tensors(model, {o for n in model.graph.node for o in n.output if o})
    nodes: dict[str, NodePrecision] = {}
    for n in model.graph.node:
        if n.op_type in QDQ_OPS:
            continue
        old = before.nodes.get(n.name)
        if old is not None and old.precision in precision.QUANTIZED:
            extra = f"; its float inputs/outputs stay FP32 ({kept[n.name]})" if n.name in kept else ""
            nodes[n.name] = NodePrecision(n.op_type, old.precision, old.reason + extra, old.pinned)
        elif n.name in kept:
            nodes[n.name] = NodePrecision(n.op_type, precision.FP32, kept[n.name], old is not None and old.pinned)
        elif n.op_type in blocked_ops:
            nodes[n.name] = NodePrecision(n.op_type, precision.FP32, f"onnxconverter-common keeps {n.op_type} in FP32")
        elif floats & set(n.output):
            if old is not None and old.pinned:
                nodes[n.name] = replace(old, precision=precision.FP16)
            else:
                nodes[n.name] = NodePrecision(n.op_type, precision.FP16, f"not quantized: {old.reason}" if old else "")
        elif old is not None:
            nodes[n.name] = old
    return PrecisionPlan(nodes)
