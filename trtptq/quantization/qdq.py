"""Q/DQ placement for TensorRT's explicit quantization, and its insertion.

Placement follows TensorRT's guide: quantize the inputs of weighted ops
(activations per-tensor, weights per-channel), the residual input of an Add
that follows a Conv (so it fuses into the Conv epilogue), and average pooling;
never their outputs. A tensor feeding several quantized consumers gets one
shared Q/DQ pair, so fusions do not break.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field

import numpy as np
import onnx_graphsurgeon as gs

from trtptq.core.errors import ModelError
from trtptq.core.int8 import INT8
from trtptq.plugins import is_plugin_op
from trtptq.quantization.graph import replace_input

WEIGHTED_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
POOLING_OPS = ("AveragePool", "GlobalAveragePool")


@dataclass
class QuantizeOptions:
    """Where Q/DQ goes. Defaults follow TensorRT's placement guidance."""

    exclude_nodes: tuple[str, ...] = ()  # node names or glob patterns kept in float
    exclude_op_types: tuple[str, ...] = ()  # op types kept in float
    keep_first: bool = False  # first weighted layer in float
    keep_last: bool = False  # last weighted layer in float
    per_channel: bool = True  # per-channel weight scales
    residual_add: bool = True  # quantize the residual input of Add after Conv
    pooling: bool = True  # quantize AveragePool/GlobalAveragePool inputs
    activation_matmul: bool = True  # quantize both inputs of activation x activation MatMul (attention BMMs)


@dataclass
class WeightSite:
    node: str
    tensor: str
    axis: int | None  # None: per-tensor


@dataclass
class Plan:
    """What gets quantized: activation tensors (to calibrate) and weights (quantized from their values)."""

    activations: dict[str, list[str]] = field(default_factory=dict)  # tensor -> consumer node names
    weights: list[WeightSite] = field(default_factory=list)
    kept: dict[str, str] = field(default_factory=dict)  # node -> why it stays in float

    def add_activation(self, tensor: str, node: str) -> None:
        consumers = self.activations.setdefault(tensor, [])
        if node not in consumers:
            consumers.append(node)


def _is_float(t: gs.Tensor) -> bool:
    return t.dtype is None or np.dtype(t.dtype).kind == "f"


def _weight_axis(node: gs.Node, index: int, w: gs.Constant) -> int | None:
    rank = len(w.shape)
    if node.op == "Conv" and index == 1:
        return 0
    if node.op == "ConvTranspose" and index == 1:
        return 1 if node.attrs.get("group", 1) == 1 else None
    if node.op == "Gemm" and index == 1:
        return 0 if node.attrs.get("transB", 0) else 1
    if node.op == "MatMul" and index == 1 and rank >= 2:
        return rank - 1
    return None  # e.g. a constant left operand: one scale


def plan(graph: gs.Graph, options: QuantizeOptions) -> Plan:
    result = Plan()
    nodes = list(graph.nodes)  # graph.toposort() was applied on import
    weighted = [n for n in nodes if n.op in WEIGHTED_OPS]
    for n in nodes:
        if is_plugin_op(n.domain):
            result.kept[n.name] = f"plugin op {n.domain}::{n.op}"
        elif n.op in options.exclude_op_types:
            result.kept[n.name] = f"op type {n.op} excluded"
        elif any(fnmatch.fnmatchcase(n.name, p) for p in options.exclude_nodes):
            result.kept[n.name] = "excluded by name"
    if options.keep_first and weighted:
        result.kept.setdefault(weighted[0].name, "first layer kept in float")
    if options.keep_last and weighted:
        result.kept.setdefault(weighted[-1].name, "last layer kept in float")

    def quantizable(n: gs.Node) -> bool:
        return n.name not in result.kept

    for n in weighted:
        if not quantizable(n):
            continue
        data = [(i, t) for i, t in enumerate(n.inputs[:2]) if t is not None and t.name]
        if not all(_is_float(t) for _, t in data):
            result.kept[n.name] = "not a float op"
            continue
        if n.op == "MatMul" and not options.activation_matmul and all(isinstance(t, gs.Variable) for _, t in data):
            result.kept[n.name] = "activation x activation MatMul (activation_matmul off)"
            continue
        for i, t in data:
            if isinstance(t, gs.Constant):
                axis = _weight_axis(n, i, t) if options.per_channel else None
                result.weights.append(WeightSite(n.name, t.name, axis))
            else:
                result.add_activation(t.name, n.name)
    conv_outputs = {n.outputs[0].name for n in weighted if n.op in ("Conv", "ConvTranspose") and quantizable(n)}
    for n in nodes:
        if not quantizable(n):
            continue
        if n.op in POOLING_OPS and options.pooling and _is_float(n.inputs[0]):
            result.add_activation(n.inputs[0].name, n.name)
        elif n.op == "Add" and options.residual_add and len(n.inputs) == 2:
            a, b = n.inputs
            if not all(isinstance(t, gs.Variable) and _is_float(t) for t in (a, b)):
                continue
            # The branch from a single-use Conv fuses into that Conv; quantize the other (residual) input.
            fused = [t for t in (a, b) if t.name in conv_outputs and len(t.outputs) == 1]
            if fused:
                residual = b if fused[0] is a else a
                result.add_activation(residual.name, n.name)
    return result


def insert_qdq(graph: gs.Graph, plan_: Plan, amax: dict[str, float]) -> gs.Graph:
    """Write Q/DQ pairs for activations (from `amax`) and int8 weights + DQ, in place."""
    missing = [t for t in plan_.activations if t not in amax]
    if missing:
        raise ModelError(f"no range for {len(missing)} tensor(s) to quantize (e.g. {', '.join(missing[:3])}); "
                         "the ranges come from another model or other options. Re-run calibration.")
    tensors = graph.tensors()
    by_name = {n.name: n for n in graph.nodes}

    for name, consumers in plan_.activations.items():
        t = tensors[name]
        scale = INT8.scale(amax[name])
        q_out = gs.Variable(f"{name}_quantized", dtype=INT8.dtype, shape=t.shape)
        dq_out = gs.Variable(f"{name}_dequantized", dtype=t.dtype or np.float32, shape=t.shape)
        s_const = gs.Constant(f"{name}_scale", scale)
        z_const = gs.Constant(f"{name}_zero_point", INT8.zero_point())
        graph.nodes.append(gs.Node("QuantizeLinear", f"{name}_QuantizeLinear", inputs=[t, s_const, z_const], outputs=[q_out]))
        graph.nodes.append(gs.Node("DequantizeLinear", f"{name}_DequantizeLinear", inputs=[q_out, s_const, z_const], outputs=[dq_out]))
        for c in consumers:
            replace_input(by_name[c], t, dq_out)

    done: dict[tuple[str, int | None], gs.Variable] = {}
    for site in plan_.weights:
        key = (site.tensor, site.axis)
        if key not in done:
            done[key] = _quantize_weight(graph, tensors[site.tensor], site.axis)
        replace_input(by_name[site.node], tensors[site.tensor], done[key])
    return graph.cleanup().toposort()


def _quantize_weight(graph: gs.Graph, w: gs.Constant, axis: int | None) -> gs.Variable:
    """The weight stored as INT8 (per-tensor, or per channel on `axis`) behind a DequantizeLinear."""
    values = np.asarray(w.values, dtype=np.float32)
    others = tuple(d for d in range(values.ndim) if d != axis) if axis is not None else None
    scale = INT8.scale(np.abs(values).max(axis=others, initial=0.0))
    q = INT8.quantize(values, scale if axis is None else np.expand_dims(scale, others))
    out = gs.Variable(f"{w.name}_dequantized", dtype=np.float32, shape=list(values.shape))
    attrs = {} if axis is None else {"axis": axis}
    graph.nodes.append(gs.Node(
        "DequantizeLinear", f"{w.name}_DequantizeLinear", attrs=attrs,
        inputs=[gs.Constant(f"{w.name}_quantized", q), gs.Constant(f"{w.name}_scale", scale),
                gs.Constant(f"{w.name}_zero_point", INT8.zero_point(scale.shape))],
        outputs=[out]))
    return out
