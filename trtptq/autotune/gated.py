"""Every mix of precisions of a plan's layers in one ONNX Runtime session, chosen per run by gate inputs.

Sensitivity and fallback evaluate dozens of variants of one Q/DQ model that
differ only in which layers see their Q/DQ, and in which format. Built one by
one, each costs a graph export and a session (seconds on a transformer, more
than running it). Here each layer reads, for every quantized input (activations
and weights), `g0 * x + g1 * t1(x) + g2 * t2(x) + ...`, with one tap `t` per
precision the layer may take (Q/DQ in a format, or FP16 rounding) and one
scalar gate input `g` per (layer, precision), `g0` for float: exactly one gate
at 1 gives that precision's value, exactly. A variant is a feed, not a model.
Each tap's `g * t(x)` is the Mul that reads `t(x)`, so insertion puts the Q/DQ
right before it and no copy of `x` is made. FP16 is simulated as rounding of
the layer's inputs and weights to FP16 (what the layer reads in a --fp16
engine; its arithmetic stays FP32 here).
"""

from __future__ import annotations

import gc
from collections.abc import Mapping, Sequence

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from trtptq.core import precision
from trtptq.core.formats import FORMATS
from trtptq.core.precision import NodePrecision
from trtptq.data import InputSpec
from trtptq.plugins import BUILTIN, Plugins
from trtptq.quantization.graph import export_graph, import_graph, replace_input
from trtptq.quantization.insert import insert_qdq
from trtptq.quantization.qdq import Plan, WeightSite
from trtptq.runtime.ort import OrtRunner

GATE_PREFIX = "trtptq_gate:"


class GatedModel:
    """The FP32 model with one gate input per (quantized layer, precision it may take); `variant` is a runner for
    one mix. `rungs`: node -> the precisions (format names, FP16) its gates offer; default its plan format."""

    def __init__(self, model: onnx.ModelProto, plan: Plan, amax: Mapping[str, float], plugins: Plugins = BUILTIN,
                 rungs: Mapping[str, Sequence[str]] | None = None):
        self.nodes = plan.quantized_nodes
        self.own = {node: plan.precision.nodes[node].precision for node in self.nodes}
        rungs = rungs if rungs is not None else {node: (p,) for node, p in self.own.items()}
        self._gates = {(node, p): f"{GATE_PREFIX}{node}:{p}" for node, ps in rungs.items()
                       for p in (precision.FP32, *ps)}  # FP32: the float input's gate
        self._runner = OrtRunner(_gated(model, plan, amax, self._gates), simulate_qdq=True, plugins=plugins,
                                 fold_weights=False)
        gc.collect()  # the graph it was built from is a cycle of nodes and tensors: free its weight copies now

    def __enter__(self) -> GatedModel:
        self._runner.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._runner.__exit__(*exc)

    def variant(self, precisions: Mapping[str, str], name: str) -> _Variant:
        """A runner (for the evaluator) with each node of `precisions` in its precision (FP32: float), every other
        node in float."""
        missing = [f"{n}:{p}" for n, p in precisions.items() if p != precision.FP32 and (n, p) not in self._gates]
        if missing:
            raise ValueError(f"the gated model has no gate for {', '.join(missing)}")
        gates = {g: np.array(float(precisions.get(node, precision.FP32) == p), np.float32)
                 for (node, p), g in self._gates.items()}
        return _Variant(self._runner, gates, name)

    def quantized(self, nodes: Sequence[str]) -> dict[str, str]:
        """`nodes` in their plan's formats: the mapping `variant` takes."""
        return {node: self.own[node] for node in nodes}


class _Variant:
    """One gate setting of the shared session, with the runtime interface (entering it holds nothing)."""

    def __init__(self, runner: OrtRunner, gates: dict[str, np.ndarray], name: str):
        self._runner, self._gates, self.name = runner, gates, name

    def __enter__(self) -> _Variant:
        return self

    def __exit__(self, *exc) -> None:
        pass

    @property
    def input_specs(self) -> list[InputSpec]:
        return [s for s in self._runner.input_specs if s.name not in self._gates]

    @property
    def output_names(self) -> list[str]:
        return self._runner.output_names

    def run(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self._runner.run({**feed, **self._gates})


def _gated(model: onnx.ModelProto, plan: Plan, amax: Mapping[str, float], gates: dict[tuple[str, str], str]
           ) -> onnx.ModelProto:
    """Each gated layer's quantized inputs replaced by their gated sum; the Mul of each quantized tap is a node of
    a plan of its own (in the tap's format), which insertion puts behind Q/DQ."""
    graph = import_graph(model)
    tensors = graph.tensors()
    by_name = {n.name: n for n in graph.nodes}
    inputs = {node: [t for t, consumers in plan.activations.items() if node in consumers] for node, _ in gates}
    weights = {node: {w.tensor: w for w in plan.weights if w.node == node} for node, _ in gates}
    taps = Plan(block_size=plan.block_size, int4=plan.int4, weight_file=plan.weight_file)
    terms: dict[tuple[str, str], list[gs.Tensor]] = {}  # (node, input tensor) -> its gated terms
    for (node, p), gate_name in gates.items():
        fmt = FORMATS.get(p)
        gate = gs.Variable(gate_name, dtype=np.float32, shape=[])
        graph.inputs.append(gate)
        for k, name in enumerate([*inputs[node], *weights[node]]):
            x = tensors[name]
            tap = f"{node}/{p}/tap{k}"
            value = _fp16_round(graph, x, tap) if p == precision.FP16 else x
            term = gs.Variable(f"{tap}/gated", dtype=x.dtype or np.float32, shape=x.shape)
            graph.nodes.append(gs.Node("Mul", tap, inputs=[value, gate], outputs=[term]))
            taps.precision.nodes[tap] = NodePrecision("Mul", p)  # float taps are not in its sites: insertion skips them
            if fmt is not None and name in weights[node]:
                w = weights[node][name]
                if fmt.activations or w.block_axis is not None:
                    taps.weights.append(WeightSite(tap, name, w.axis, w.block_axis))
            elif fmt is not None:
                taps.add_activation(name, tap)  # a weight-only format's consumers read it as is
            terms.setdefault((node, name), []).append(term)
    for (node, name), parts in terms.items():
        replace_input(by_name[node], tensors[name], _sum(graph, parts, f"{node}/{name}/mixed"))
    graph = insert_qdq(graph, taps, amax)
    return export_graph(graph, model)


def _fp16_round(graph: gs.Graph, x: gs.Tensor, name: str) -> gs.Tensor:
    if isinstance(x, gs.Constant):
        values = np.asarray(x.values)
        return gs.Constant(f"{name}/fp16", values.astype(np.float16).astype(values.dtype))
    half = gs.Variable(f"{name}/half", dtype=np.float16, shape=x.shape)
    back = gs.Variable(f"{name}/out", dtype=x.dtype or np.float32, shape=x.shape)
    graph.nodes += [gs.Node("Cast", f"{name}/Cast16", {"to": onnx.TensorProto.FLOAT16}, [x], [half]),
                    gs.Node("Cast", f"{name}/Cast32", {"to": onnx.TensorProto.FLOAT}, [half], [back])]
    return back


def _sum(graph: gs.Graph, parts: list[gs.Tensor], name: str) -> gs.Tensor:
    """parts[0] + parts[1] + ..., one Add each."""
    total = parts[0]
    for k, part in enumerate(parts[1:]):
        out = gs.Variable(f"{name}{k}", dtype=part.dtype, shape=part.shape)
        graph.nodes.append(gs.Node("Add", f"{name}{k}/Add", inputs=[total, part], outputs=[out]))
        total = out
    return total
