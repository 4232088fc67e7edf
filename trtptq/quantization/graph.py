"""The ONNX <-> onnx-graphsurgeon seam of the quantize stage: import once, edit, export with the source's metadata."""

from __future__ import annotations

import onnx
import onnx_graphsurgeon as gs

from trtptq.core.errors import ModelError
from trtptq.core.model import has_qdq, with_node_names


def import_graph(model: onnx.ModelProto) -> gs.Graph:
    """gs graph with every node named, Constant-node weights turned into constants, dtypes inferred where possible."""
    if has_qdq(model):
        raise ModelError("the model already has QuantizeLinear/DequantizeLinear nodes; "
                         "quantize the FP32 model instead.")
    model = with_node_names(model)
    try:
        model = onnx.shape_inference.infer_shapes(model)
    except Exception:  # noqa: BLE001 - inference is only for dtypes; a model over 2 GB or a custom op may refuse
        pass
    graph = gs.import_onnx(model)
    outputs = {t.name for t in graph.outputs}
    for node in graph.nodes:
        value = node.attrs.get("value") if node.op == "Constant" else None
        out = node.outputs[0] if node.outputs else None
        if isinstance(value, gs.Constant) and out is not None and out.name not in outputs:
            # Detach the output from its Constant node, then turn that same tensor into a constant: its consumers
            # keep their tensor, and no second tensor of the same name exists (gs warns on every lookup if one does).
            node.outputs.clear()
            out.to_constant(value.values)
    return graph.cleanup().toposort()


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
