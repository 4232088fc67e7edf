"""Model I/O: load with clear errors, save atomically (external data past 2 GB)."""

from __future__ import annotations

import os
import pathlib

import onnx

from trtptq.core import fileio
from trtptq.core.errors import ModelError

# Protobuf cannot serialize a message of 2 GiB or more; past this, weights go to a side file.
PROTOBUF_LIMIT = 2**31 - 1
_OPSET_FOR_PER_CHANNEL = 13
QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")


def load(path: str | os.PathLike, load_external_data: bool = True) -> onnx.ModelProto:
    """Read an ONNX model, with its external data, or explain why not."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise ModelError(f"model {path} does not exist. Check the path.")
    try:
        model = onnx.load(str(path), load_external_data=load_external_data)
    except FileNotFoundError as e:
        raise ModelError(f"model {path} refers to external data that is missing ({e.filename}). "
                         "Keep the .onnx file beside its data file(s).") from None
    except Exception as e:  # protobuf's DecodeError and friends
        raise ModelError(f"{path} is not a readable ONNX model ({type(e).__name__}: {e}). "
                         "Re-export it or check the file was copied whole.") from None
    if not model.graph.node:
        raise ModelError(f"{path} has an empty graph: nothing to calibrate. Is it really an ONNX model?")
    return model


PLUGIN_CHECK_DOMAIN = "trtptq.plugin"


def check(model: onnx.ModelProto, what: str) -> None:
    """onnx.checker on a model of any size (big ones are checked through a temp file).

    Ops ONNX does not define in its default domain are TensorRT plugins (exporters write EfficientNMS_TRT
    there; TensorRT finds plugins by op type): the checker sees them in a custom domain, as it would any plugin.
    """
    plugins = [k for k, n in enumerate(model.graph.node) if not n.domain and not onnx.defs.has(n.op_type)]
    if plugins:
        copy = onnx.ModelProto()
        copy.CopyFrom(model)
        for k in plugins:
            copy.graph.node[k].domain = PLUGIN_CHECK_DOMAIN
        copy.opset_import.append(onnx.helper.make_opsetid(PLUGIN_CHECK_DOMAIN, 1))
        model = copy
    try:
        if model.ByteSize() < PROTOBUF_LIMIT:
            onnx.checker.check_model(model)
    except onnx.checker.ValidationError as e:
        raise ModelError(f"{what} fails onnx.checker: {str(e).splitlines()[0]}") from None


def opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 1)


def ensure_opset(model: onnx.ModelProto, minimum: int = _OPSET_FOR_PER_CHANNEL) -> onnx.ModelProto:
    """Upgrade the default-domain opset to `minimum` (per-channel DequantizeLinear needs 13)."""
    if opset(model) >= minimum:
        return model
    from onnx import version_converter

    try:
        return version_converter.convert_version(model, minimum)
    except Exception as e:
        raise ModelError(f"cannot upgrade the model from opset {opset(model)} to {minimum} ({e}). "
                         f"Re-export it with opset >= {minimum}.") from None


def has_qdq(model: onnx.ModelProto) -> bool:
    """Whether the model is already quantized (explicit INT8): it holds a QuantizeLinear or DequantizeLinear node."""
    return any(n.op_type in QDQ_OPS for n in model.graph.node)


def with_node_names(model: onnx.ModelProto) -> onnx.ModelProto:
    """`model`, or a copy whose unnamed nodes are named OpType_index: precision decisions are made per node name."""
    if all(n.name for n in model.graph.node):
        return model
    out = onnx.ModelProto()
    out.CopyFrom(model)
    taken = {n.name for n in out.graph.node}
    for i, n in enumerate(out.graph.node):
        if not n.name:
            n.name = next(c for c in (f"{n.op_type}_{i}", *(f"{n.op_type}_{i}_{k}" for k in range(1, 1000))) if c not in taken)
            taken.add(n.name)
    return out

def save(model: onnx.ModelProto, path: str | os.PathLike) -> pathlib.Path:
    """Write atomically; models over 2 GB keep their weights in `<name>.data` beside the file."""
    path = pathlib.Path(path)
    external = model.ByteSize() >= PROTOBUF_LIMIT or any(
        t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer)
    if not external:
        with fileio.atomic_path(path) as tmp:
            onnx.save(model, str(tmp))
        return path
    data_name = path.name + ".data"
    # Both files are written under temp names, then renamed: the data first, so the model never points at a stale one.
    copy = onnx.ModelProto()
    copy.CopyFrom(model)  # onnx.save moves the weights of the model it is given out to the file
    with fileio.atomic_path(path) as tmp_model, fileio.atomic_path(path.with_name(data_name)) as tmp_data:
        onnx.save(copy, str(tmp_model), save_as_external_data=True, all_tensors_to_one_file=True,
                  location=tmp_data.name, size_threshold=1024)
        _point_external_data(tmp_model, tmp_data.name, data_name)
    return path


def _point_external_data(model_path: pathlib.Path, old: str, new: str) -> None:
    """Rewrite the external-data location from the temp name to the final one."""
    m = onnx.load(str(model_path), load_external_data=False)
    for t in m.graph.initializer:
        for entry in t.external_data:
            if entry.key == "location" and entry.value == old:
                entry.value = new
    onnx.save(m, str(model_path))


def float_tensors(model: onnx.ModelProto, names: set[str]) -> set[str]:
    """The names whose inferred type is float (unknown types count as float)."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
        types = {vi.name: vi.type.tensor_type.elem_type for vi in
                 [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]}
    except Exception:  # noqa: BLE001 - inference may refuse custom ops or models over 2 GB
        types = {}
    floats = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16)
    return {n for n in names if types.get(n, onnx.TensorProto.FLOAT) in floats}


def activations(model: onnx.ModelProto) -> list[str]:
    """Every float tensor that data flows through (graph inputs and node outputs, not weights), in graph order."""
    weights = {i.name for i in model.graph.initializer}
    constants = {o for n in model.graph.node if n.op_type == "Constant" for o in n.output}
    names = [i.name for i in model.graph.input if i.name not in weights]
    names += [o for n in model.graph.node if n.op_type != "Constant" for o in n.output if o]
    names = [n for n in dict.fromkeys(names) if n not in constants]
    floats = float_tensors(model, set(names))
    return [n for n in names if n in floats]
