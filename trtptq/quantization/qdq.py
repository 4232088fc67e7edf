"""Q/DQ placement for TensorRT's explicit quantization (insertion: `quantization.insert`).

`plan` walks the graph once, in topological order, and applies each node's
rule from a rule table (`rules.RULES` by default): which inputs take Q/DQ,
weights per channel (or in blocks, for INT4), and which formats the op takes.
Every decision lands in the precision plan (the node's format, INT8, FP8 or
INT4, with the rule's reason, or FP32 with why the node stays in float),
which the quantized model carries in its metadata. The sites are recorded
whatever the format, so a node can change format later (`Plan.with_precisions`)
without placing again; insertion reads each node's format from the plan. A
tensor feeding several quantized consumers gets one shared Q/DQ pair per
format, so fusions do not break; INT4 (weight-only) consumers read it as is.
"""

from __future__ import annotations

import difflib
import fnmatch
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

import numpy as np
import onnx_graphsurgeon as gs

from trtptq.core import precision
from trtptq.core.errors import ModelError
from trtptq.core.formats import FORMATS, FP8, INT4, INT8, QuantFormat
from trtptq.core.model import WeightFile
from trtptq.core.precision import NodePrecision, PrecisionPlan
from trtptq.plugins import is_plugin_op
from trtptq.quantization.options import AUTO, LAYER_PRECISIONS, PRECISIONS, QuantizeOptions
from trtptq.quantization.rules import RULES, OpRule, rule_key
from trtptq.quantization.weights import Fp8Weights, Int4Weights

logger = logging.getLogger(__name__)
@dataclass
class WeightSite:
    node: str
    tensor: str
    axis: int | None  # per-channel axis (INT8, FP8); None: per-tensor
    block_axis: int | None = None  # INT4: the reduction axis its blocks run along; None: the node takes no INT4


@dataclass
class Plan:
    """What gets quantized: activation tensors (to calibrate) and weights (quantized from their values), and why."""

    activations: dict[str, list[str]] = field(default_factory=dict)  # tensor -> consumer node names
    weights: list[WeightSite] = field(default_factory=list)
    precision: PrecisionPlan = field(default_factory=PrecisionPlan)  # each node's format, and nodes kept in float
    block_size: int = 128  # INT4 weight blocks
    takes: dict[str, frozenset[str]] = field(default_factory=dict)  # placed node -> the formats its op's rule takes
    #: how its INT4 weights are rounded (from the calibration's channel statistics), shared by every plan derived
    #: from this one: the same weights in every model made of it
    int4: Int4Weights = field(default_factory=Int4Weights, compare=False, repr=False)
    #: how its FP8 weights are rounded (each channel's scale of four equally fine ones, by the same statistics),
    #: shared as `int4` is
    fp8: Fp8Weights = field(default_factory=Fp8Weights, compare=False, repr=False)
    #: where the quantized weights of the models made of it go, shared by all of them (None: into each model):
    #: for the models a run builds to measure, of a model with external data (`core.model.WeightFile`)
    weight_file: WeightFile | None = field(default=None, compare=False, repr=False)

    @property
    def kept(self) -> dict[str, str]:
        """node -> why it stays in float (FP32, or FP16 where the engine is built with --fp16)."""
        return {name: p.reason for name, p in self.precision.nodes.items() if p.precision not in precision.QUANTIZED}

    @property
    def quantized_nodes(self) -> list[str]:
        """The nodes that run quantized (INT8, FP8, INT4), in graph order: the units sensitivity ranks and fallback
        keeps in float."""
        return [name for name, p in self.precision.nodes.items() if p.precision in precision.QUANTIZED]

    def format_of(self, node: str) -> QuantFormat:
        """The format `node` is quantized to; a node the plan does not name (a copy of one) takes INT8."""
        entry = self.precision.nodes.get(node)
        return FORMATS.get(entry.precision, INT8) if entry is not None else INT8

    def formats_for(self, node: str) -> tuple[QuantFormat, ...]:
        """The formats `node` can run in on its recorded sites: its rule's, INT4 where blocks divide all its weights."""
        weights = [w for w in self.weights if w.node == node]
        blocked = bool(weights) and all(w.block_axis is not None for w in weights)
        return tuple(f for f in FORMATS.values() if f.name in self.takes.get(node, ()) and (f.activations or blocked))

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

    def with_precisions(self, chosen: Mapping[str, NodePrecision]) -> Plan:
        """This plan with the quantized nodes of `chosen` (name -> precision and why) in another one; float entries
        (FP16, FP32) drop the node's sites as `without` does."""
        floats = {name: p.reason for name, p in chosen.items() if p.precision not in precision.QUANTIZED}
        out = self.without(floats) if floats else self
        nodes = {name: chosen.get(name, p) for name, p in out.precision.nodes.items()}
        return replace(out, precision=replace(out.precision, nodes=nodes))


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
    result = Plan(block_size=options.block_size)
    fmt = FORMATS[PRECISIONS[options.precision]]
    unplaced: dict[str, list[str]] = {}  # --layer-precision PATTERN=PRECISION -> nodes it could not place, and why
    for n in nodes:
        rule = rules.get(rule_key(n))
        why = _exclusion(n, rule, options) or ends.get(n.name)
        chosen = None if why else _layer_precision(n, options)
        if why:
            result.precision.nodes[n.name] = NodePrecision(n.op, precision.FP32, why)
        elif chosen is not None:
            if missed := _place_chosen(n, rule, *chosen, options, rules, result):
                unplaced.setdefault(f"--layer-precision {chosen[0]}={chosen[1]}", []).append(f"{n.name}: {missed}")
        elif rule is not None and (rule.switch is None or getattr(options, rule.switch)):
            _place(n, rule, fmt, options, rules, result)
    for flag, missed in unplaced.items():
        logger.warning("%s: %d node(s) stay in float (e.g. %s)", flag, len(missed), missed[0])
    return result


def _layer_precision(n: gs.Node, options: QuantizeOptions) -> tuple[str, str] | None:
    """The last --layer-precision (pattern, precision) naming `n` by op type or name glob, if any."""
    return next((pair for pair in reversed(options.layer_precisions)
                 if pair[0] == n.op or fnmatch.fnmatchcase(n.name, pair[0])), None)


def _place_chosen(n: gs.Node, rule: OpRule | None, pattern: str, name: str, options: QuantizeOptions,
                  rules: Mapping[str, OpRule], result: Plan) -> str | None:
    """`n` in the precision --layer-precision gives it, pinned there: float, or its format (one line if its op
    cannot take that format); why it stays in float where it has nothing to quantize in it."""
    target, why = LAYER_PRECISIONS[name], f"--layer-precision {pattern}={name}"
    if target not in FORMATS:
        result.precision.nodes[n.name] = NodePrecision(n.op, target, why, pinned=True)
        return None
    if rule is None or target not in rule.formats:
        takes = sorted(p for p, f in LAYER_PRECISIONS.items() if f not in FORMATS or (rule and f in rule.formats))
        raise ModelError(f"--layer-precision {pattern}={name}: node {n.name} ({n.op}) cannot run in {target} "
                         f"(TensorRT takes {n.op} in {', '.join(takes)}); give it one of those, or a pattern that "
                         "does not name it.")
    _place(n, rule, FORMATS[target], options, rules, result)
    placed = result.precision.nodes.get(n.name)
    if placed is not None and placed.precision == target:
        result.precision.nodes[n.name] = replace(placed, reason=f"{why}; {placed.reason}", pinned=True)
        return None
    found = (placed.reason if placed is not None else "no input it quantizes here" if FORMATS[target].activations
             else f"no weight whose reduction axis --block-size {options.block_size} divides")
    result.precision.nodes[n.name] = NodePrecision(n.op, precision.FP32, f"{why}: {found}")
    return found


def _place(n: gs.Node, rule: OpRule, fmt: QuantFormat, options: QuantizeOptions, rules: Mapping[str, OpRule],
           result: Plan) -> None:
    """Apply `rule` to `n`: its Q/DQ sites into `result`, and the node's precision (`fmt`, or FP32 and why).

    A node whose op does not take `fmt` is left undecided (it runs in float): for INT4, every node but the weighted
    GEMMs."""
    decided = result.precision.nodes
    if fmt.name not in rule.formats:
        return
    gap = rule.missing_kernel(n, fmt.name)
    if gap:
        decided[n.name] = NodePrecision(n.op, precision.FP32, gap)
        return
    sites = [(i, n.inputs[i]) for i in rule.inputs if i < len(n.inputs) and n.inputs[i].name]
    if rule.weight_axis is None:
        sites = [(i, t) for i, t in sites if not isinstance(t, gs.Constant)]
    if rule.weights_only:
        sites = [(i, t) for i, t in sites if isinstance(t, gs.Constant)]
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
        fused = [t for _, t in sites if _fuses_into_producer(t, fmt, decided, rules)]
        sites = [(i, t) for i, t in sites if fused and t is not fused[0]]
    outputs = [n.outputs[i] for i in rule.outputs if i < len(n.outputs) and n.outputs[i].outputs and _is_float(n.outputs[i])]
    if not sites and not outputs:
        return
    for t in outputs:  # a plugin writing INT8: every consumer reads the output through one Q/DQ pair
        for consumer in t.outputs:
            result.add_activation(t.name, consumer.name)
    blocks = {i: _block_axis(rule, n, i, t, result.block_size) for i, t in sites if isinstance(t, gs.Constant)}
    if not fmt.activations and not any(axis is not None for axis in blocks.values()):
        return  # weight-only, and no weight its blocks divide
    for i, t in sites:
        if isinstance(t, gs.Constant):
            axis = rule.weight_axis(n, i, len(t.shape)) if options.per_channel else None
            result.weights.append(WeightSite(n.name, t.name, axis, blocks[i]))
        else:
            result.add_activation(t.name, n.name)
    decided[n.name] = NodePrecision(n.op, fmt.name, rule.reason.format(op=n.op))
    result.takes[n.name] = rule.formats


def _block_axis(rule: OpRule, n: gs.Node, index: int, t: gs.Constant, block_size: int) -> int | None:
    """The axis INT4 blocks of weight `t` run along, if the op takes INT4 and `block_size` divides it."""
    if INT4.name not in rule.formats or rule.block_axis is None:
        return None
    axis = rule.block_axis(n, index, len(t.shape))
    return axis if axis is not None and t.shape[axis] % block_size == 0 else None


def int4_inputs(graph: gs.Graph, plan_: Plan, options: QuantizeOptions) -> dict[str, str]:
    """INT4 weight -> the activation it multiplies along the activation's last axis (a MatMul's A, a Gemm's A without
    transA): the tensors the activation-aware scales need channel statistics of, for every node that may end up in
    INT4: in INT4 by its plan, or free for --precision auto to put there (INT4 among the run's formats and its
    sites). The --target ladder only moves a node up from its own format, so no other node ends up in INT4."""
    weight = {site.node: site.tensor for site in plan_.weights
              if site.block_axis is not None and _may_take(plan_, site.node, options, INT4)}
    return {weight[n.name]: n.inputs[0].name for n in graph.nodes
            if n.name in weight and isinstance(n.inputs[0], gs.Variable) and n.inputs[0].name in plan_.activations
            and (n.op == "MatMul" or (n.op == "Gemm" and not n.attrs.get("transA", 0)))}


def fp8_inputs(graph: gs.Graph, plan_: Plan, options: QuantizeOptions) -> dict[str, str]:
    """FP8 weight -> the activation it multiplies along the activation's last axis, for every MatMul or Gemm that may
    end up in FP8 (by its plan, or free for --precision auto to put there): the tensors whose channel moments choose
    the FP8 weights' rounding (`quantization.weights.per_channel_fitted`). A 2-D weight only."""
    tensors = graph.tensors()
    weight = {site.node: site.tensor for site in plan_.weights if site.axis is not None
              and len(tensors[site.tensor].shape or ()) == 2 and _may_take(plan_, site.node, options, FP8)}
    return {weight[n.name]: n.inputs[0].name for n in graph.nodes
            if n.name in weight and isinstance(n.inputs[0], gs.Variable) and n.inputs[0].name in plan_.activations
            and (n.op == "MatMul" or (n.op == "Gemm" and not n.attrs.get("transA", 0)))}


def _may_take(plan_: Plan, node: str, options: QuantizeOptions, fmt: QuantFormat) -> bool:
    if plan_.format_of(node) is fmt:
        return True
    return (options.precision == AUTO and fmt in options.formats and not plan_.precision.nodes[node].pinned
            and fmt in plan_.formats_for(node))


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


def _fuses_into_producer(t: gs.Tensor, fmt: QuantFormat, decided: dict[str, NodePrecision],
                         rules: Mapping[str, OpRule]) -> bool:
    """Whether `t` comes from a single-use op (Conv) running in `fmt` whose epilogue an Add reading `t` fuses into."""
    if len(t.inputs) != 1 or len(t.outputs) != 1:
        return False
    producer = t.inputs[0]
    rule = rules.get(rule_key(producer))
    entry = decided.get(producer.name)
    return rule is not None and rule.fuses_add and entry is not None and entry.precision == fmt.name


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
    for pattern, name in options.layer_precisions:
        if pattern not in ops and not any(fnmatch.fnmatchcase(n, pattern) for n in names):
            logger.warning("--layer-precision %s=%s names no op type or node of the model%s", pattern, name,
                           _similar(pattern, [*ops, *names]))


def _similar(word: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(word, choices, n=3, cutoff=0.5)
    return f"; similar: {', '.join(close)}" if close else ""
