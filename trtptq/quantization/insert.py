"""Q/DQ insertion: a plan's sites written into the graph, each in its node's format.

One Q/DQ pair per (tensor, format) (INT8's names stay the plain ones of earlier trtptq models; FP8's carry
`_fp8`), weights per channel (INT8, FP8) or in blocks (INT4, packed by onnx); `FedScales` turns the
activation scales of a written model into inputs, for candidates that differ only in their ranges.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx_graphsurgeon.ir.tensor import LazyValues

from trtptq.core import precision
from trtptq.core.errors import ModelError
from trtptq.core.formats import FORMATS, FP8, INT4, INT8, QuantFormat
from trtptq.quantization import weights as weight_formats
from trtptq.quantization.graph import export_graph, import_graph, replace_input, weight_values
from trtptq.quantization.qdq import Plan


def quantized_model(model: onnx.ModelProto, plan_: Plan, amax: Mapping[str, float]) -> onnx.ModelProto:
    """The Q/DQ model of `plan_` with `amax`, carrying its precision plan (a fresh graph each call: insertion edits it).

    `model` must already have the opset its formats need (`QuantizeOptions.opset`; FP8 19, INT4 blocks 21)."""
    graph = insert_qdq(import_graph(model), plan_, amax)
    return precision.write_plan(export_graph(graph, model), plan_.precision)


def _stem(tensor: str, fmt: QuantFormat, suffix: str = "") -> str:
    """What the names of a tensor's Q/DQ pair (or quantized weight) in `fmt` start with: the format tells them apart,
    INT8's keep the plain names of earlier trtptq models."""
    return f"{tensor}{'' if fmt is INT8 else '_' + fmt.name.lower()}{suffix}"


@dataclass(frozen=True)
class FedScales:
    """A Q/DQ model from `insert_qdq` whose activation scales are graph inputs: candidates that differ only in their
    ranges run in one ONNX Runtime session, each with its own `feeds`, instead of a session each (MiniLM: 0.33 s a
    session, a serialization of the whole model and its weights folded again)."""

    model: onnx.ModelProto
    sites: Mapping[str, tuple[str, QuantFormat]]  # scale input -> (tensor, format)

    @classmethod
    def of(cls, model: onnx.ModelProto, tensors: Iterable[str]) -> FedScales:
        """`model`'s scales of `tensors` made inputs, in place (no second copy of a large model's weights)."""
        names = {f"{_stem(tensor, fmt)}_scale": (tensor, fmt) for tensor in tensors for fmt in FORMATS.values()
                 if fmt.activations}
        initializers = model.graph.initializer
        fed = [k for k, init in enumerate(initializers) if init.name in names and not init.dims]
        sites = {initializers[k].name: names[initializers[k].name] for k in fed}
        for k in reversed(fed):
            del initializers[k]
        model.graph.input.extend(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, []) for name in sites)
        return cls(model, sites)

    def feeds(self, amax: Mapping[str, float]) -> dict[str, np.ndarray]:
        """The scale inputs for the ranges `amax`."""
        return {name: np.asarray(fmt.scale(amax[tensor]), np.float32) for name, (tensor, fmt) in self.sites.items()}


def insert_qdq(graph: gs.Graph, plan_: Plan, amax: Mapping[str, float], suffix: str = "") -> gs.Graph:
    """Write Q/DQ pairs for activations (from `amax`) and quantized weights + DQ, each in its node's format, in place.

    `suffix` makes the new names unique when one graph takes several insertions (sensitivity's layer copies).
    INT4 weights are rounded as `plan_.int4` says (activation-aware where it has their inputs' statistics).
    """
    by_format = {name: _consumers_by_format(plan_, consumers) for name, consumers in plan_.activations.items()}
    missing = [t for t, groups in by_format.items() if groups and t not in amax]
    if missing:
        raise ModelError(f"no range for {len(missing)} tensor(s) to quantize (e.g. {', '.join(missing[:3])}); "
                         "the ranges come from another model or other options. Re-run calibration.")
    tensors = graph.tensors()
    by_name = {n.name: n for n in graph.nodes}

    for name, groups in by_format.items():
        t = tensors[name]
        for fmt, consumers in groups.items():
            scale = fmt.scale(amax[name])
            base = _stem(name, fmt, suffix)
            q_out = gs.Variable(f"{base}_quantized", dtype=fmt.dtype, shape=t.shape)
            dq_out = gs.Variable(f"{base}_dequantized", dtype=t.dtype or np.float32, shape=t.shape)
            s_const = gs.Constant(f"{base}_scale", scale)
            z_const = _constant(f"{base}_zero_point", fmt.zero_point())
            graph.nodes.append(gs.Node("QuantizeLinear", f"{base}_QuantizeLinear", inputs=[t, s_const, z_const],
                                       outputs=[q_out]))
            graph.nodes.append(gs.Node("DequantizeLinear", f"{base}_DequantizeLinear", inputs=[q_out, s_const, z_const],
                                       outputs=[dq_out]))
            for c in consumers:
                replace_input(by_name[c], t, dq_out)

    if plan_.weight_file is None:  # a model too large for memory rounds them one at a time, as it reads them
        def rounding(fmt: QuantFormat, axis_of) -> list:
            """(weight, its values when read, axis) of each weight the plan puts in `fmt`, once."""
            found = {(site.tensor, axis_of(site)) for site in plan_.weights if plan_.format_of(site.node) is fmt}
            return [(w, lambda w=w: np.asarray(weight_values(tensors[w]), np.float32), axis)
                    for w, axis in sorted(found, key=str)]

        plan_.int4.round_all(rounding(INT4, lambda site: site.block_axis), INT4, plan_.block_size)
        plan_.fp8.round_all(rounding(FP8, lambda site: site.axis), FP8)
    done: dict[tuple, gs.Variable] = {}
    for site in plan_.weights:
        fmt = plan_.format_of(site.node)
        axis = site.block_axis if fmt is INT4 else site.axis
        key = (site.tensor, fmt.name, axis)
        if key not in done:
            done[key] = _quantize_weight(graph, tensors[site.tensor], fmt, axis, plan_, suffix)
        replace_input(by_name[site.node], tensors[site.tensor], done[key])
    return graph.cleanup().toposort()


def _consumers_by_format(plan_: Plan, consumers: list[str]) -> dict[QuantFormat, list[str]]:
    """The consumers of one tensor grouped by the format they read it in; weight-only (INT4) consumers read it as is."""
    groups: dict[QuantFormat, list[str]] = {}
    for c in consumers:
        fmt = plan_.format_of(c)
        if fmt.activations:
            groups.setdefault(fmt, []).append(c)
    return groups


def _quantize_weight(graph: gs.Graph, w: gs.Constant, fmt: QuantFormat, axis: int | None, plan_: Plan,
                     suffix: str = "") -> gs.Variable:
    """The weight stored in `fmt` behind a DequantizeLinear: per-tensor, per channel on `axis`, or for a
    weight-only format (INT4) in the plan's blocks along `axis`, rounded as `plan_.int4` says; where the plan has a
    weight file, the quantized values are computed once for all the models made of it and read from that file."""
    block_size = plan_.block_size

    def quantized() -> tuple[np.ndarray, np.ndarray]:
        values = np.asarray(weight_values(w), dtype=np.float32)
        if fmt is FP8:
            return plan_.fp8.quantize(w.name, values, fmt, axis)
        if fmt.activations:
            return weight_formats.per_channel(values, fmt, axis)
        return plan_.int4.quantize(w.name, values, fmt, axis, block_size)

    base = _stem(w.name, fmt, suffix)
    if plan_.weight_file is not None:
        reference, scale = plan_.weight_file.tensor((w.name, fmt.name, axis, block_size), f"{base}_quantized", quantized)
        q = gs.Constant(f"{base}_quantized", LazyValues(reference))
    else:
        values, scale = quantized()
        q = _constant(f"{base}_quantized", values)
    out = gs.Variable(f"{base}_dequantized", dtype=np.float32, shape=list(w.shape))
    attrs = {} if axis is None else {"axis": axis}
    if not fmt.activations:
        attrs["block_size"] = block_size
    graph.nodes.append(gs.Node(
        "DequantizeLinear", f"{base}_DequantizeLinear", attrs=attrs,
        inputs=[q, gs.Constant(f"{base}_scale", scale), _constant(f"{base}_zero_point", fmt.zero_point(scale.shape))],
        outputs=[out]))
    return out


def _constant(name: str, values: np.ndarray) -> gs.Constant:
    """A constant of any format's dtype: INT4 goes through onnx's own packing (gs would write one value per byte)."""
    if values.dtype.itemsize == 1 and values.dtype.name in ("int4", "uint4"):
        return gs.Constant(name, LazyValues(onnx.numpy_helper.from_array(values, name)))
    return gs.Constant(name, values)
