"""Every mix of INT8 and float layers of a plan in one ONNX Runtime session, chosen per run by gate inputs.

Sensitivity and fallback evaluate dozens of variants of one Q/DQ model that
differ only in which layers see their Q/DQ. Built one by one, each costs a
graph export and a session (seconds on a transformer, more than running it).
Here each INT8 layer reads `x + g * (DQ(Q(x)) - x)` for every quantized input
(activations and weights), with `g` a scalar graph input per layer: 1 gives
the INT8 value, 0 the float one, exactly. A variant is a feed, not a model.
"""

from __future__ import annotations

import gc
from collections.abc import Collection, Mapping

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from trtptq.data import InputSpec
from trtptq.plugins import BUILTIN, Plugins
from trtptq.quantization.graph import export_graph, import_graph
from trtptq.quantization.qdq import Plan, insert_qdq
from trtptq.runtime.ort import OrtRunner

GATE_PREFIX = "trtptq_gate:"


class GatedModel:
    """The plan's Q/DQ model with one gate input per INT8 layer; `variant(int8)` is a runner for one mix."""

    def __init__(self, model: onnx.ModelProto, plan: Plan, amax: Mapping[str, float], plugins: Plugins = BUILTIN):
        self.nodes = plan.quantized_nodes
        self._gates = {node: f"{GATE_PREFIX}{node}" for node in self.nodes}
        self._runner = OrtRunner(_gated(model, plan, amax, self._gates), simulate_qdq=True, plugins=plugins)
        gc.collect()  # the graph it was built from is a cycle of nodes and tensors: free its weight copies now

    def __enter__(self) -> GatedModel:
        self._runner.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._runner.__exit__(*exc)

    def variant(self, int8: Collection[str], name: str) -> _Variant:
        """A runner (for the evaluator) with exactly the `int8` layers quantized, the others in float."""
        on = set(int8)
        gates = {g: np.array(float(node in on), np.float32) for node, g in self._gates.items()}
        return _Variant(self._runner, gates, name)


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


def _gated(model: onnx.ModelProto, plan: Plan, amax: Mapping[str, float], gates: dict[str, str]) -> onnx.ModelProto:
    graph = import_graph(model)
    tensors = graph.tensors()
    floats = {w.tensor: tensors[w.tensor] for w in plan.weights}  # the FP32 weights, unread: insertion replaces them
    graph = insert_qdq(graph, plan, amax)
    by_name = {n.name: n for n in graph.nodes}
    for node, gate_name in gates.items():
        n = by_name[node]
        gate = gs.Variable(gate_name, dtype=np.float32, shape=[])
        graph.inputs.append(gate)
        for i, t in enumerate(n.inputs):
            dq = t.inputs[0] if len(t.inputs) == 1 and t.inputs[0].op == "DequantizeLinear" else None
            if dq is None:
                continue
            source = dq.inputs[0]
            if source.inputs and source.inputs[0].op == "QuantizeLinear":  # an activation: Q's own input
                x = source.inputs[0].inputs[0]
            else:  # a weight: the FP32 model's own (a reference to its data, never a copy)
                x = floats[t.name.removesuffix("_dequantized")]
            n.inputs[i] = _mix(graph, x, t, gate, f"{node}/gate{i}")
    return export_graph(graph.cleanup().toposort(), model)


def _mix(graph: gs.Graph, x: gs.Tensor, q: gs.Tensor, gate: gs.Variable, name: str) -> gs.Variable:
    """x + gate * (q - x): q where the gate is 1, x where it is 0."""
    dtype = q.dtype or np.float32
    diff = gs.Variable(f"{name}/diff", dtype=dtype)
    scaled = gs.Variable(f"{name}/scaled", dtype=dtype)
    out = gs.Variable(f"{name}/mixed", dtype=dtype, shape=q.shape)
    graph.nodes += [gs.Node("Sub", f"{name}/Sub", inputs=[q, x], outputs=[diff]),
                    gs.Node("Mul", f"{name}/Mul", inputs=[diff, gate], outputs=[scaled]),
                    gs.Node("Add", f"{name}/Add", inputs=[x, scaled], outputs=[out])]
    return out
