"""Every mix of precisions of a plan's layers in one ONNX Runtime session, chosen per run by gate inputs.

Sensitivity and fallback evaluate dozens of variants of one Q/DQ model that
differ only in which layers see their Q/DQ, and in which format. Built one by
one, each costs a graph export and a session (seconds on a transformer, more
than running it). Here each gated layer reads its quantized inputs (activations
and weights) through one If per precision it may take, on a boolean gate input
per (layer, precision): its then branch holds the inputs' taps in that
precision (Q/DQ in a format, or FP16 rounding), its else branch the If of the
layer's previous precision, the innermost one the inputs as they are (float:
no gate set). A variant is a feed, not a model; it runs only the taps it
selects and passes their values on as they are, so its outputs are those of
the Q/DQ model of its mix, bit for bit. A gated sum (`g0*x + g1*t(x)`) ran
every tap each run and held three transient FP32 copies of a weight, a
selected branch holds one (a 3 GiB model's sensitivity: 1.53x its weights at
its peak, 1.37x; MobileNetV2's: 4x faster). FP16 is simulated as rounding of
the layer's inputs and weights to FP16 (what the layer reads in a --fp16
engine; its arithmetic stays FP32 here).
"""

from __future__ import annotations

import gc
from collections.abc import Mapping, Sequence

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx_graphsurgeon.exporters.onnx_exporter import OnnxExporter

from trtptq.core import precision
from trtptq.core.formats import FORMATS
from trtptq.core.precision import NodePrecision
from trtptq.plugins import BUILTIN, Plugins
from trtptq.quantization.graph import export_graph, import_graph, replace_input
from trtptq.quantization.insert import insert_qdq
from trtptq.quantization.qdq import Plan, WeightSite
from trtptq.runtime.ort import OrtRunner
from trtptq.runtime.runner import WithFeeds

GATE_PREFIX = "trtptq_gate:"


class GatedModel:
    """The FP32 model with one gate input per (quantized layer, precision it may take); `variant` is a runner for
    one mix. `rungs`: node -> the precisions (format names, FP16) its gates offer; default its plan format."""

    def __init__(self, model: onnx.ModelProto, plan: Plan, amax: Mapping[str, float], plugins: Plugins = BUILTIN,
                 rungs: Mapping[str, Sequence[str]] | None = None):
        self.nodes = plan.quantized_nodes
        self.own = {node: plan.precision.nodes[node].precision for node in self.nodes}
        rungs = rungs if rungs is not None else {node: (p,) for node, p in self.own.items()}
        self._gates = {(node, p): f"{GATE_PREFIX}{node}:{p}" for node, ps in rungs.items() for p in ps}
        self._runner = OrtRunner(_gated(model, plan, amax, self._gates), simulate_qdq=True, plugins=plugins,
                                 fold_weights=False)
        gc.collect()  # the graph it was built from is a cycle of nodes and tensors: free its weight copies now

    def __enter__(self) -> GatedModel:
        self._runner.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._runner.__exit__(*exc)

    def variant(self, precisions: Mapping[str, str], name: str) -> WithFeeds:
        """A runner (for the evaluator) with each node of `precisions` in its precision (FP32: float), every other
        node in float."""
        missing = [f"{n}:{p}" for n, p in precisions.items() if p != precision.FP32 and (n, p) not in self._gates]
        if missing:
            raise ValueError(f"the gated model has no gate for {', '.join(missing)}")
        gates = {g: np.array(precisions.get(node, precision.FP32) == p) for (node, p), g in self._gates.items()}
        return WithFeeds(self._runner, gates, name)

    def quantized(self, nodes: Sequence[str]) -> dict[str, str]:
        """`nodes` in their plan's formats: the mapping `variant` takes."""
        return {node: self.own[node] for node in nodes}


def _gated(model: onnx.ModelProto, plan: Plan, amax: Mapping[str, float], gates: dict[tuple[str, str], str]
           ) -> onnx.ModelProto:
    """Each gated layer's quantized inputs replaced by the outputs of its Ifs, one per precision of `gates` (the
    gate's name per (layer, precision); float is the default)."""
    graph = import_graph(model)
    tensors = graph.tensors()
    by_name = {n.name: n for n in graph.nodes}
    rungs: dict[str, dict[str, str]] = {}  # node -> its precisions' gates
    for (node, p), gate_name in gates.items():
        rungs.setdefault(node, {})[p] = gate_name
    held: dict[str, gs.Constant] = {}  # what the branches read, by name (insertion names by tensor and format)
    for node, node_gates in rungs.items():
        sites = {t: None for t, consumers in plan.activations.items() if node in consumers}
        sites |= {w.tensor: w for w in plan.weights if w.node == node}
        xs = [tensors[name] for name in sites]
        select = None
        for p, gate_name in node_gates.items():
            otherwise = (gs.Graph(nodes=[select], outputs=select.outputs, name=f"{select.name}/selected") if select
                         else _taps(node, precision.FP32, sites, tensors, plan, amax, held))
            gate = gs.Variable(gate_name, dtype=np.bool_, shape=[])
            graph.inputs.append(gate)
            outs = [gs.Variable(f"{node}/{p}/selected{k}", dtype=x.dtype or np.float32, shape=x.shape)
                    for k, x in enumerate(xs)]
            select = gs.Node("If", f"{node}/{p}", inputs=[gate], outputs=outs, attrs={
                "then_branch": _taps(node, p, sites, tensors, plan, amax, held), "else_branch": otherwise})
        graph.nodes.append(select)
        for x, out in zip(xs, select.outputs):
            replace_input(by_name[node], x, out)
    out = export_graph(graph.cleanup().toposort(), model)
    names = {t.name for t in out.graph.initializer}
    out.graph.initializer.extend(OnnxExporter.export_tensor_proto(c) for c in held.values() if c.name not in names)
    return out


def _taps(node: str, p: str, sites: Mapping[str, WeightSite | None], tensors: Mapping[str, gs.Tensor], plan: Plan,
          amax: Mapping[str, float], held: dict[str, gs.Constant]) -> gs.Graph:
    """A branch whose outputs are `node`'s inputs (`sites`: activations -> None, weights -> their site) in precision
    `p`: through Q/DQ in its format, rounded to FP16, or as they are. Each is an Identity reading the value, the
    node a plan of its own puts the Q/DQ before (ONNX Runtime removes it after a DequantizeLinear, which then
    writes the If's output: one FP32 copy of a weight). The constants it reads go to the main graph (`held`):
    ONNX Runtime maps a main graph's external weights, but reads a branch's into memory."""
    fmt = FORMATS.get(p)
    branch = gs.Graph(name=f"{node}/{p}")
    taps = Plan(block_size=plan.block_size, int4=plan.int4, fp8=plan.fp8, weight_file=plan.weight_file)
    for k, (name, w) in enumerate(sites.items()):
        x = tensors[name]
        tap = f"{node}/{p}/tap{k}"
        value = _fp16_round(branch, x, tap) if p == precision.FP16 else x
        out = gs.Variable(f"{tap}/value", dtype=x.dtype or np.float32, shape=x.shape)
        branch.nodes.append(gs.Node("Identity", tap, inputs=[value], outputs=[out]))
        branch.outputs.append(out)
        taps.precision.nodes[tap] = NodePrecision("Identity", p)
        if fmt is not None and w is not None and (fmt.activations or w.block_axis is not None):
            taps.weights.append(WeightSite(tap, name, w.axis, w.block_axis))
        elif fmt is not None and w is None:
            taps.add_activation(name, tap)  # a weight-only format's consumers read it as is
    branch = insert_qdq(branch, taps, amax)
    outer: dict[str, gs.Variable] = {}  # each constant's name in the branch, read from the main graph
    for n in branch.nodes:
        for i, t in enumerate(n.inputs):
            if isinstance(t, gs.Constant):
                held[t.name] = t
                n.inputs[i] = outer.setdefault(t.name, gs.Variable(t.name))
    return branch


def _fp16_round(graph: gs.Graph, x: gs.Tensor, name: str) -> gs.Tensor:
    if isinstance(x, gs.Constant):
        values = np.asarray(x.values)
        return gs.Constant(f"{name}/fp16", values.astype(np.float16).astype(values.dtype))
    half = gs.Variable(f"{name}/half", dtype=np.float16, shape=x.shape)
    back = gs.Variable(f"{name}/out", dtype=x.dtype or np.float32, shape=x.shape)
    graph.nodes += [gs.Node("Cast", f"{name}/Cast16", {"to": onnx.TensorProto.FLOAT16}, [x], [half]),
                    gs.Node("Cast", f"{name}/Cast32", {"to": onnx.TensorProto.FLOAT}, [half], [back])]
    return back
