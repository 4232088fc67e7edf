"""The ONNX <-> onnx-graphsurgeon seam of the quantize stage: import once, edit, export with the source's metadata."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx.external_data_helper import uses_external_data
from onnx_graphsurgeon.importers.onnx_importer import OnnxImporter
from onnx_graphsurgeon.ir.tensor import LazyValues

from trtptq.core.errors import ModelError
from trtptq.core.model import has_qdq, skeleton, values, weights_dir, with_node_names


class _FileValues(LazyValues):
    """A weight kept in its model's data file: read from the model's folder when its values are first needed, and
    exported as the same reference (gs exports a LazyValues' tensor as it is)."""

    def __init__(self, model: onnx.ModelProto, tensor: onnx.TensorProto):
        super().__init__(tensor)
        self._model = model

    def load(self):
        return values(self._model, self.tensor)


def import_graph(model: onnx.ModelProto) -> gs.Graph:
    """gs graph with every node named, Constant-node weights turned into constants, dtypes inferred where possible.

    Weights kept in data files stay there until a step reads their values (quantizing a weight reads that one).
    """
    if has_qdq(model):
        raise ModelError("the model already has QuantizeLinear/DequantizeLinear nodes; "
                         "quantize the FP32 model instead.")
    model = with_node_names(model)
    graph = gs.import_onnx(model)
    try:  # inference is only for dtypes and shapes, on the skeleton: no weights copied, whatever the model's size
        inferred = onnx.shape_inference.infer_shapes(skeleton(model)).graph.value_info
    except Exception:  # noqa: BLE001 - a custom op may refuse
        inferred = []
    tensors = graph.tensors()
    for vi in inferred:
        t = tensors.get(vi.name)
        if isinstance(t, gs.Variable) and t.dtype is None:
            found = OnnxImporter.import_tensor(vi)
            t.dtype, t.shape = found.dtype, found.shape
    if weights_dir(model) is not None:
        kept = {i.name: i for i in model.graph.initializer if uses_external_data(i)}
        for t in tensors.values():
            if isinstance(t, gs.Constant) and t.name in kept:
                t.values = _FileValues(model, kept[t.name])
                t.data_location = None  # once read, a weight is exported with its values (unread: as its reference)
    outputs = {t.name for t in graph.outputs}
    kept = []
    for node in graph.nodes:
        value = node.attrs.get("value") if node.op == "Constant" else None
        out = node.outputs[0] if node.outputs else None
        if isinstance(value, gs.Constant) and out is not None and out.name not in outputs:
            # Detach the output from its Constant node, then turn that same tensor into a constant: its consumers
            # keep their tensor, and no second tensor of the same name exists (gs warns on every lookup if one does).
            node.outputs.clear()
            out.to_constant(value.values)
        else:
            kept.append(node)
    # The detached Constant nodes go here, not in cleanup: gs formats every node it removes into a log message,
    # values and all, logged or not (PP-OCRv4's detector: 342 of them, 0.4 s per import).
    graph.nodes = kept
    return graph.cleanup().toposort()


def weight_values(weight: gs.Constant) -> np.ndarray:
    """A constant's values, read without caching them in the constant: a weight that is quantized stays a
    reference to its data (file or tensor), so a graph that keeps it (a gated or probe model) never holds it twice."""
    lazy = weight._values  # gs's own exporter reads it so; `values` would replace it with the array
    return lazy.load() if isinstance(lazy, LazyValues) else weight.values


def replace_input(node: gs.Node, old: gs.Tensor, new: gs.Tensor) -> None:
    for i, t in enumerate(node.inputs):
        if t is old:
            node.inputs[i] = new


def export_graph(graph: gs.Graph, like: onnx.ModelProto) -> onnx.ModelProto:
    """Export a gs graph keeping the source model's metadata (IR version, metadata props); producer: trtptq."""
    from trtptq.core.version import __version__

    out = gs.export_onnx(graph)
    out.ir_version = like.ir_version
    out.producer_name, out.producer_version = "trtptq", __version__
    del out.metadata_props[:]
    out.metadata_props.extend(like.metadata_props)
    return out
