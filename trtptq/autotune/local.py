"""Each INT8 layer's local error, for all layers in one run: its output with INT8 inputs vs FP32, fed FP32 inputs.

The model runs once in FP32; beside every measured layer sits a copy of it
whose inputs pass through Q/DQ (one copy per set of ranges, e.g. per range
method), fed the same FP32 activations. The copy's output against the
original's isolates what INT8 does in that layer alone, with no error arriving
from upstream: ONNX Runtime's `qdq_loss_debug` idea, done for every layer and
every candidate range in one pass (more where `memory_budget` splits it).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from trtptq.calibration.passes import plan_passes
from trtptq.core.log import progress
from trtptq.core.model import with_node_names
from trtptq.data import Batch
from trtptq.evaluation.metrics import SnrStats
from trtptq.plugins import BUILTIN, Plugins
from trtptq.quantization.graph import export_graph, import_graph
from trtptq.quantization.qdq import Plan, WeightSite, insert_qdq
from trtptq.runtime.ort import OrtRunner


def local_snr(model: onnx.ModelProto, plan: Plan, amax_sets: Mapping[str, Mapping[str, float]], nodes: Sequence[str],
              batches: Sequence[Batch], memory_budget: int, show_progress: bool = False,
              plugins: Plugins = BUILTIN) -> dict[str, dict[str, float]]:
    """node -> range set -> SNR (dB) of the node's first output, INT8 inputs at that set's ranges vs FP32.

    `batches` are run as given (keep them few: every layer's output is held per batch).
    """
    first = {n.name: n.output[0] for n in with_node_names(model).graph.node}  # the names the plan uses
    outputs = {name: first[name] for name in nodes}
    budget = max(1, memory_budget // (1 + len(amax_sets)))
    groups = plan_passes(model, list(outputs.values()), batches[0].feed, budget) if batches else []
    producer = {t: name for name, t in outputs.items()}
    stats = {name: {key: SnrStats() for key in amax_sets} for name in nodes}
    with progress(total=len(groups) * len(batches), enabled=show_progress, desc="local errors", unit="batch") as bar:
        for group in groups:
            members = [producer[t] for t in group]
            copies, probe = _with_copies(model, plan, amax_sets, members)
            with OrtRunner(probe, simulate_int8=True, many_outputs=True, plugins=plugins) as runner:
                for batch in batches:
                    got = runner.run(batch.feed)
                    for name in members:
                        for key, copy in copies[name].items():
                            stats[name][key].update(got[outputs[name]], got[copy])
                    bar.update(1)
    return {name: {key: s.snr_db for key, s in per.items()} for name, per in stats.items()}


def _with_copies(model: onnx.ModelProto, plan: Plan, amax_sets: Mapping[str, Mapping[str, float]],
                 nodes: Sequence[str]) -> tuple[dict[str, dict[str, str]], onnx.ModelProto]:
    """The FP32 model plus, per range set, an INT8-input copy of each node; its outputs are the nodes' first
    outputs and their copies'. Returns (node -> set -> copy's output name, model)."""
    graph = import_graph(model)
    by_name = {n.name: n for n in graph.nodes}
    copies: dict[str, dict[str, str]] = {name: {} for name in nodes}
    wanted = {name: by_name[name].outputs[0] for name in nodes}
    for tensor in wanted.values():  # a graph output needs a type; where inference gave none (plugin ops), float
        tensor.dtype = tensor.dtype or np.float32
    graph.outputs = list(wanted.values())
    for k, (key, amax) in enumerate(amax_sets.items()):
        sites = Plan()
        for name in nodes:
            n = by_name[name]
            twin = gs.Node(n.op, f"{name}__local{k}", dict(n.attrs), list(n.inputs),
                           [gs.Variable(f"{o.name}__local{k}", dtype=o.dtype or np.float32) for o in n.outputs], domain=n.domain)
            graph.nodes.append(twin)
            for tensor, consumers in plan.activations.items():
                if name in consumers:
                    sites.add_activation(tensor, twin.name)
            sites.weights += [WeightSite(twin.name, w.tensor, w.axis) for w in plan.weights if w.node == name]
            graph.outputs.append(twin.outputs[0])
            copies[name][key] = twin.outputs[0].name
        insert_qdq(graph, sites, amax, suffix=f"__local{k}")
    return copies, export_graph(graph, model)


def small_batches(batches: Iterable[Batch], samples: int, size: int = 4) -> list[Batch]:
    """The first `samples` samples in batches of `size`: every layer's output and its copies are held per batch,
    so small batches keep the whole probe in one pass where big ones would split it into many runs."""
    out, taken = [], 0
    for batch in batches:
        for start in range(0, batch.size, size):
            n = min(size, batch.size - start, samples - taken)
            if n <= 0:
                return out
            labels = None if batch.labels is None else batch.labels[start:start + n]
            out.append(Batch({k: v[start:start + n] for k, v in batch.feed.items()}, labels, n, batch.origin))
            taken += n
    return out
