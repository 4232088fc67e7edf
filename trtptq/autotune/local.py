"""Each INT8 layer's local error, for all layers in one run: its output with INT8 inputs vs FP32, fed FP32 inputs.

The model runs in FP32; beside every measured layer sits a copy of it whose
inputs pass through Q/DQ (one copy per set of ranges, e.g. per range method),
fed the same FP32 activations. The copy's output against the original's
isolates what INT8 does in that layer alone, with no error arriving from
upstream: ONNX Runtime's `qdq_loss_debug` idea, done for every layer and every
candidate range in one run. The sums an SNR needs (sum ref^2, sum (copy - ref)^2)
are reduced in the graph, so the run's outputs are scalars, and the nodes run
in an order that puts each layer's copies right after it, so no activation
outlives its layer by much: the run holds about what an FP32 run holds,
whatever the number of layers and sets (the PP-OCRv4 detector at 480x640, 4
sets, 1 sample per run: 140 MB over the model; every output and copy of 4
samples, as they were held before, took 3.6 GB).
"""

from __future__ import annotations

import gc
import itertools
from collections.abc import Iterable, Iterator, Mapping, Sequence

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from trtptq.core.log import progress
from trtptq.core.precision import NodePrecision
from trtptq.data import Batch
from trtptq.evaluation.metrics import snr_db
from trtptq.plugins import BUILTIN, Plugins
from trtptq.quantization.graph import export_graph, import_graph
from trtptq.quantization.insert import insert_qdq
from trtptq.quantization.qdq import Plan, WeightSite
from trtptq.runtime.ort import OrtRunner


def local_snr(model: onnx.ModelProto, plan: Plan, amax_sets: Mapping[str, Mapping[str, float]], nodes: Sequence[str],
              batches: Iterable[Batch], show_progress: bool = False, plugins: Plugins = BUILTIN,
              formats: Mapping[str, str] | None = None) -> dict[str, dict[str, float]]:
    """node -> range set -> SNR (dB) of the node's first output, quantized inputs at that set's ranges vs FP32.

    Each set's copies take the format `formats` gives it (default: each node's own, from the plan); a node that
    cannot run in a set's format (`Plan.formats_for`) has no entry for it."""
    batches = iter(batches)
    first = next(batches, None)  # what makes them (an evaluator's FP32 reference run) runs before the probe opens
    signal, noise_of, probe = _probe(model, plan, amax_sets, nodes, formats or {})
    gc.collect()  # the probe's graph is a cycle of nodes and tensors: free its weight copies before the session opens
    sums = dict.fromkeys([*signal.values(), *(n for per in noise_of.values() for n in per.values())], 0.0)
    with OrtRunner(probe, simulate_qdq=True, in_order=True, plugins=plugins, fold_weights=False) as runner, \
            progress(enabled=show_progress, desc="local errors", unit="batch") as bar:
        for batch in itertools.chain([first] if first is not None else [], batches):
            for name, value in runner.run(batch.feed).items():
                sums[name] += float(value)
            bar.update(1)
    return {node: {key: snr_db(sums[signal[node]], sums[out]) for key, out in per.items()}
            for node, per in noise_of.items()}


def _probe(model: onnx.ModelProto, plan: Plan, amax_sets: Mapping[str, Mapping[str, float]], nodes: Sequence[str],
           formats: Mapping[str, str]) -> tuple[dict[str, str], dict[str, dict[str, str]], onnx.ModelProto]:
    """The FP32 model plus, per range set, a quantized-input copy of each node (in the set's format), whose only
    outputs are the sums: (node -> sum ref^2 output, node -> set -> sum (copy - ref)^2 output, model). Sets that
    give a node the same format and input ranges share its copy."""
    graph = import_graph(model)
    by_name = {n.name: n for n in graph.nodes}
    graph.outputs = []  # the sums only (each insertion's cleanup keeps what reaches them)
    signal = {name: _sum_sq(graph, by_name[name].outputs[0], f"{name}__signal") for name in nodes}
    noise_of: dict[str, dict[str, str]] = {name: {} for name in nodes}
    inputs = {name: [t for t, consumers in plan.activations.items() if name in consumers] for name in nodes}
    own = {name: plan.format_of(name).name for name in nodes}
    takes = {name: {f.name for f in plan.formats_for(name)} | {own[name]} for name in nodes}
    # every copy's weights: one quantized weight per (tensor, format), INT4 rounded as the plan's are
    weights = Plan(block_size=plan.block_size, int4=plan.int4, fp8=plan.fp8, weight_file=plan.weight_file)
    for k, (key, amax) in enumerate(amax_sets.items()):
        sites = Plan(block_size=plan.block_size)
        for name in nodes:
            fmt = formats.get(key, own[name])
            if fmt not in takes[name]:
                continue
            mine = (fmt, [amax[t] for t in inputs[name]])
            same = next((other for other in noise_of[name]
                         if (formats.get(other, own[name]), [amax_sets[other][t] for t in inputs[name]]) == mine), None)
            if same is not None:
                noise_of[name][key] = noise_of[name][same]
                continue
            n = by_name[name]
            twin = gs.Node(n.op, f"{name}__local{k}", dict(n.attrs), list(n.inputs),
                           [gs.Variable(f"{o.name}__local{k}", dtype=o.dtype or np.float32) for o in n.outputs], domain=n.domain)
            graph.nodes.append(twin)
            sites.precision.nodes[twin.name] = weights.precision.nodes[twin.name] = NodePrecision(n.op, fmt)
            for tensor in inputs[name]:
                sites.add_activation(tensor, twin.name)
            weights.weights += [WeightSite(twin.name, w.tensor, w.axis, w.block_axis) for w in plan.weights
                                if w.node == name]
            diff = gs.Variable(f"{twin.name}__error", dtype=twin.outputs[0].dtype)
            graph.nodes.append(gs.Node("Sub", f"{twin.name}__Sub", inputs=[twin.outputs[0], n.outputs[0]], outputs=[diff]))
            noise_of[name][key] = _sum_sq(graph, diff, f"{twin.name}__noise")
        insert_qdq(graph, sites, amax, suffix=f"__local{k}")
    insert_qdq(graph, weights, {}, suffix="__local")
    sums = {out.name: out for out in graph.outputs}
    graph.outputs = [sums[out] for out in dict.fromkeys(o for name in nodes for o in (signal[name], *noise_of[name].values()))]
    graph.nodes = _as_needed(graph.outputs)
    return signal, noise_of, export_graph(graph, model)


def _as_needed(outputs: Sequence[gs.Tensor]) -> list[gs.Node]:
    """The nodes that compute `outputs`, in an order that computes each output as soon as the ones before it allow
    (a depth-first post-order): with the outputs in layer order, a layer's copies and sums run right after it."""
    order: list[gs.Node] = []
    seen: set[int] = set()
    for out in outputs:
        stack = [(out.inputs[0], False)]
        while stack:
            node, inputs_done = stack.pop()
            if inputs_done:
                order.append(node)
                continue
            if id(node) in seen:
                continue
            seen.add(id(node))
            stack.append((node, True))
            stack += [(t.inputs[0], False) for t in reversed(node.inputs) if t.inputs and id(t.inputs[0]) not in seen]
    return order


def _sum_sq(graph: gs.Graph, x: gs.Tensor, name: str) -> str:
    """A scalar graph output: the sum of x^2 over all its elements (in float32 per run; runs add up in float64)."""
    out = gs.Variable(name, dtype=np.float32, shape=[])
    graph.nodes.append(gs.Node("ReduceSumSquare", f"{name}__ReduceSumSquare", {"keepdims": 0}, [x], [out]))
    graph.outputs.append(out)
    return name


def first_samples(batches: Iterable[Batch], samples: int, whole: bool = False) -> Iterator[Batch]:
    """The batches of the first `samples` samples, the last one cut short unless `whole` (a model's fixed batch)."""
    taken = 0
    for batch in batches:
        if taken >= samples:
            return
        n = batch.size if whole else min(batch.size, samples - taken)
        labels = None if batch.labels is None else batch.labels[:n]
        yield batch if n == batch.size else Batch({k: v[:n] for k, v in batch.feed.items()}, labels, n, batch.origin)
        taken += n

