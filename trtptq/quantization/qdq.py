"""Q/DQ placement for TensorRT's explicit quantization, and its insertion.

`plan` walks the graph once, in topological order, and applies each node's
rule from a rule table (`rules.RULES` by default): which inputs take Q/DQ,
weights per channel. A tensor feeding several quantized consumers gets one
shared Q/DQ pair, so fusions do not break. Every decision lands in the
precision plan (INT8 with the rule's reason, or FP32 with why the node stays
in float), which the quantized model carries in its metadata.
"""

from __future__ import annotations

import difflib
import fnmatch
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from trtptq.core import precision
from trtptq.core.errors import ModelError
from trtptq.core.int8 import INT8
from trtptq.core.options import check_names
from trtptq.core.precision import NodePrecision, PrecisionPlan
from trtptq.plugins import is_plugin_op
from trtptq.quantization.graph import export_graph, import_graph, replace_input
from trtptq.quantization.rules import RULES, OpRule, rule_key

logger = logging.getLogger(__name__)


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

    def __post_init__(self) -> None:
        check_names("--exclude-nodes", self.exclude_nodes)
        check_names("--exclude-op-types", self.exclude_op_types)


@dataclass
class WeightSite:
    node: str
    tensor: str
    axis: int | None  # None: per-tensor


@dataclass
class Plan:
    """What gets quantized: activation tensors (to calibrate) and weights (quantized from their values), and why."""

    activations: dict[str, list[str]] = field(default_factory=dict)  # tensor -> consumer node names
    weights: list[WeightSite] = field(default_factory=list)
    precision: PrecisionPlan = field(default_factory=PrecisionPlan)  # INT8 nodes and nodes kept in float

    @property
    def kept(self) -> dict[str, str]:
        """node -> why it stays in float."""
        return {name: p.reason for name, p in self.precision.nodes.items() if p.precision == precision.FP32}

    @property
    def int8_nodes(self) -> list[str]:
        """The nodes that run in INT8, in graph order: the units sensitivity ranks and fallback keeps in float."""
        return [name for name, p in self.precision.nodes.items() if p.precision == precision.INT8]

    def add_activation(self, tensor: str, node: str) -> None:
        consumers = self.activations.setdefault(tensor, [])
        if node not in consumers:
            consumers.append(node)

    def without(self, kept: Mapping[str, str]) -> Plan:
        """This plan with the `kept` nodes (name -> why) in float: their Q/DQ sites dropped, the others untouched.

        A tensor shared with a node still in INT8 keeps its Q/DQ for that node,
        so removing a layer never changes what its neighbours see.
        """
        activations = {t: rest for t, consumers in self.activations.items()
                       if (rest := [c for c in consumers if c not in kept])}
        nodes = {name: NodePrecision(p.op, precision.FP32, kept[name]) if name in kept else p
                 for name, p in self.precision.nodes.items()}
        return replace(self, activations=activations, weights=[w for w in self.weights if w.node not in kept],
                       precision=replace(self.precision, nodes=nodes))


def _is_float(t: gs.Tensor) -> bool:
    return t.dtype is None or np.dtype(t.dtype).kind == "f"


def plan(graph: gs.Graph, options: QuantizeOptions, rules: Mapping[str, OpRule] = RULES) -> Plan:
    """Place Q/DQ on `graph` (topologically sorted, as `import_graph` leaves it) by the rule of each node's op."""
    nodes = list(graph.nodes)
    _warn_unmatched(nodes, options)
    weighted = [n for n in nodes if (r := rules.get(rule_key(n))) is not None and r.weighted]
    ends: dict[str, str] = {}
    if options.keep_first and weighted:
        ends[weighted[0].name] = "first layer kept in float"
    if options.keep_last and weighted:
        ends.setdefault(weighted[-1].name, "last layer kept in float")
    result = Plan()
    for n in nodes:
        rule = rules.get(rule_key(n))
        why = _exclusion(n, rule, options) or ends.get(n.name)
        if why:
            result.precision.nodes[n.name] = NodePrecision(n.op, precision.FP32, why)
        elif rule is not None and (rule.switch is None or getattr(options, rule.switch)):
            _place(n, rule, options, rules, result)
    return result


def _place(n: gs.Node, rule: OpRule, options: QuantizeOptions, rules: Mapping[str, OpRule], result: Plan) -> None:
    """Apply `rule` to `n`: its Q/DQ sites into `result`, and the node's precision (INT8, or FP32 and why)."""
    decided = result.precision.nodes
    sites = [(i, n.inputs[i]) for i in rule.inputs if i < len(n.inputs) and n.inputs[i].name]
    if rule.weight_axis is None:
        sites = [(i, t) for i, t in sites if not isinstance(t, gs.Constant)]
    if not all(_is_float(t) for _, t in sites):
        if rule.weighted:
            decided[n.name] = NodePrecision(n.op, precision.FP32, "not a float op")
        return
    if (rule.activations_switch and not getattr(options, rule.activations_switch)
            and all(isinstance(t, gs.Variable) for _, t in sites)):
        decided[n.name] = NodePrecision(n.op, precision.FP32, f"activation x activation {n.op} ({rule.activations_switch} off)")
        return
    if rule.residual:
        # An input from a single-use, quantized Conv fuses into that Conv's epilogue; quantize the other (residual).
        fused = [t for _, t in sites if _fuses_into_producer(t, decided, rules)]
        sites = [(i, t) for i, t in sites if fused and t is not fused[0]]
    outputs = [n.outputs[i] for i in rule.outputs if i < len(n.outputs) and n.outputs[i].outputs and _is_float(n.outputs[i])]
    if not sites and not outputs:
        return
    for t in outputs:  # a plugin writing INT8: every consumer reads the output through one Q/DQ pair
        for consumer in t.outputs:
            result.add_activation(t.name, consumer.name)
    for i, t in sites:
        if isinstance(t, gs.Constant):
            axis = rule.weight_axis(n, i, len(t.shape)) if options.per_channel else None
            result.weights.append(WeightSite(n.name, t.name, axis))
        else:
            result.add_activation(t.name, n.name)
    decided[n.name] = NodePrecision(n.op, precision.INT8, rule.reason.format(op=n.op))


def _exclusion(n: gs.Node, rule: OpRule | None, options: QuantizeOptions) -> str | None:
    """Why the user's options or the node's kind keep it in float, if they do."""
    if rule is None and is_plugin_op(n.domain):
        return f"plugin op {n.domain}::{n.op}"  # no rule: its INT8 behaviour is unknown
    if rule is not None and not rule.inputs and not rule.outputs:
        return rule.reason.format(op=n.op)
    if n.op in options.exclude_op_types:
        return f"op type {n.op} excluded"
    if any(fnmatch.fnmatchcase(n.name, p) for p in options.exclude_nodes):
        return "excluded by name"
    return None


def _fuses_into_producer(t: gs.Tensor, decided: dict[str, NodePrecision], rules: Mapping[str, OpRule]) -> bool:
    if len(t.inputs) != 1 or len(t.outputs) != 1:
        return False
    producer = t.inputs[0]
    rule = rules.get(rule_key(producer))
    entry = decided.get(producer.name)
    return rule is not None and rule.fuses_add and entry is not None and entry.precision == precision.INT8


def _warn_unmatched(nodes: list[gs.Node], options: QuantizeOptions) -> None:
    """One warning per exclusion that matches nothing: a typo there would quietly quantize what was meant to stay float."""
    names = [n.name for n in nodes]
    for pattern in options.exclude_nodes:
        if not any(fnmatch.fnmatchcase(name, pattern) for name in names):
            logger.warning("excluded node pattern %r matches no node of the model%s", pattern, _similar(pattern, names))
    ops = sorted({n.op for n in nodes})
    for op in options.exclude_op_types:
        if op not in ops:
            logger.warning("excluded op type %r is not in the model%s", op, _similar(op, ops))


def _similar(word: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(word, choices, n=3, cutoff=0.5)
    return f"; similar: {', '.join(close)}" if close else ""


def quantized_model(model: onnx.ModelProto, plan_: Plan, amax: Mapping[str, float]) -> onnx.ModelProto:
    """The Q/DQ model of `plan_` with `amax`, carrying its precision plan (a fresh graph each call: insertion edits it)."""
    return precision.write_plan(export_graph(insert_qdq(import_graph(model), plan_, amax), model), plan_.precision)


def with_scales(qdq_model: onnx.ModelProto, amax: Mapping[str, float]) -> onnx.ModelProto:
    """A copy of a Q/DQ model from `insert_qdq` with its activation scales set from `amax`: candidates that differ
    only in their ranges, without placing and exporting the graph again."""
    out = onnx.ModelProto()
    out.CopyFrom(qdq_model)
    for init in out.graph.initializer:
        tensor = init.name.removesuffix("_scale")
        if tensor != init.name and tensor in amax:
            init.CopyFrom(onnx.numpy_helper.from_array(np.asarray(INT8.scale(amax[tensor]), np.float32), init.name))
    return out


def insert_qdq(graph: gs.Graph, plan_: Plan, amax: Mapping[str, float], suffix: str = "") -> gs.Graph:
    """Write Q/DQ pairs for activations (from `amax`) and int8 weights + DQ, in place.

    `suffix` makes the new names unique when one graph takes several insertions (sensitivity's layer copies).
    """
    missing = [t for t in plan_.activations if t not in amax]
    if missing:
        raise ModelError(f"no range for {len(missing)} tensor(s) to quantize (e.g. {', '.join(missing[:3])}); "
                         "the ranges come from another model or other options. Re-run calibration.")
    tensors = graph.tensors()
    by_name = {n.name: n for n in graph.nodes}

    for name, consumers in plan_.activations.items():
        t = tensors[name]
        scale = INT8.scale(amax[name])
        base = f"{name}{suffix}"
        q_out = gs.Variable(f"{base}_quantized", dtype=INT8.dtype, shape=t.shape)
        dq_out = gs.Variable(f"{base}_dequantized", dtype=t.dtype or np.float32, shape=t.shape)
        s_const = gs.Constant(f"{base}_scale", scale)
        z_const = gs.Constant(f"{base}_zero_point", INT8.zero_point())
        graph.nodes.append(gs.Node("QuantizeLinear", f"{base}_QuantizeLinear", inputs=[t, s_const, z_const], outputs=[q_out]))
        graph.nodes.append(gs.Node("DequantizeLinear", f"{base}_DequantizeLinear", inputs=[q_out, s_const, z_const], outputs=[dq_out]))
        for c in consumers:
            replace_input(by_name[c], t, dq_out)

    done: dict[tuple[str, int | None], gs.Variable] = {}
    for site in plan_.weights:
        key = (site.tensor, site.axis)
        if key not in done:
            done[key] = _quantize_weight(graph, tensors[site.tensor], site.axis, suffix)
        replace_input(by_name[site.node], tensors[site.tensor], done[key])
    return graph.cleanup().toposort()


def _quantize_weight(graph: gs.Graph, w: gs.Constant, axis: int | None, suffix: str = "") -> gs.Variable:
    """The weight stored as INT8 (per-tensor, or per channel on `axis`) behind a DequantizeLinear."""
    values = np.asarray(w.values, dtype=np.float32)
    others = tuple(d for d in range(values.ndim) if d != axis) if axis is not None else None
    scale = INT8.scale(np.abs(values).max(axis=others, initial=0.0))
    q = INT8.quantize(values, scale if axis is None else np.expand_dims(scale, others))
    base = f"{w.name}{suffix}"
    out = gs.Variable(f"{base}_dequantized", dtype=np.float32, shape=list(values.shape))
    attrs = {} if axis is None else {"axis": axis}
    graph.nodes.append(gs.Node(
        "DequantizeLinear", f"{base}_DequantizeLinear", attrs=attrs,
        inputs=[gs.Constant(f"{base}_quantized", q), gs.Constant(f"{base}_scale", scale),
                gs.Constant(f"{base}_zero_point", INT8.zero_point(scale.shape))],
        outputs=[out]))
    return out
