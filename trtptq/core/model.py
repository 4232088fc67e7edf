"""Model I/O: load with clear errors, save atomically (external data past 2 GB), weights left in their files.

A model with external data is loaded without it: its weights stay in their
data files, the model records the folder they are in (metadata
`EXTERNAL_DIR`), and each stage reads a weight only when it needs its values
(`values`). A 3 GB model is then a few kilobytes of graph in memory, far under
protobuf's 2 GB limit, and ONNX Runtime or TensorRT read the weights from the
files themselves (`as_file`): calibrating, quantizing, comparing and building never hold them twice
(docs/calibration.md, "Models over 2 GB", has the measurements and the exceptions). The quantized weights of the
models one run builds to measure (`WeightFile`) go to a hidden data file beside them, once, for the same reason.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import pathlib
import tempfile
import weakref
from collections.abc import Callable, Hashable, Iterator

import numpy as np
import onnx
from google.protobuf.message import EncodeError
from onnx.external_data_helper import ExternalDataInfo, uses_external_data

from trtptq.core import fileio
from trtptq.core.errors import ModelError

# Protobuf cannot serialize a message of 2 GiB or more; past this, weights go to a side file.
PROTOBUF_LIMIT = 2**31 - 1
EXTERNAL_DIR = "trtptq.external_data_dir"  # metadata of a loaded model: the folder its external weights are read from
_EXTERNAL_MIN = 1024  # bytes: smaller tensors stay inline when a model is saved with external data
_ALIGN = 4096  # offsets of saved external tensors: page-aligned, so ONNX Runtime can map them
_SKELETON_DATA = "skeleton.weights"  # where a skeleton's weights claim to be (an empty file when one is checked)
_VALUES_KEPT = 1024  # elements: a skeleton keeps the values of tensors this small (shape constants, for inference)
_CHUNK = 64 << 20  # bytes copied at a time between data files
_OPSET_FOR_PER_CHANNEL = 13
QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")


def load(path: str | os.PathLike) -> onnx.ModelProto:
    """Read an ONNX model, or explain why not; external weights stay in their files (see the module's note)."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise ModelError(f"model {path} does not exist. Check the path.")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # protobuf's DecodeError and friends
        raise ModelError(f"{path} is not a readable ONNX model ({type(e).__name__}: {e}). "
                         "Re-export it or check the file was copied whole.") from None
    if not model.graph.node:
        raise ModelError(f"{path} has an empty graph: nothing to calibrate. Is it really an ONNX model?")
    files = {ExternalDataInfo(t).location for t in model.graph.initializer if uses_external_data(t)}
    missing = sorted(f for f in files if not (path.parent / f).is_file())
    if missing:
        raise ModelError(f"model {path} refers to external data that is missing ({path.parent / missing[0]}). "
                         "Keep the .onnx file beside its data file(s).")
    if files:
        onnx.helper.set_model_props(model, {**{p.key: p.value for p in model.metadata_props},
                                            EXTERNAL_DIR: str(path.parent.resolve())})
    return model


def weights_dir(model: onnx.ModelProto) -> pathlib.Path | None:
    """The folder a loaded model's external weights are read from; None if it has none."""
    folder = next((p.value for p in model.metadata_props if p.key == EXTERNAL_DIR), None)
    return pathlib.Path(folder) if folder is not None else None


def values(model: onnx.ModelProto, tensor: onnx.TensorProto) -> np.ndarray:
    """The values of one of `model`'s tensors, read from its data file if it is kept there."""
    return onnx.numpy_helper.to_array(tensor, str(weights_dir(model) or ""))


def with_weights(model: onnx.ModelProto) -> onnx.ModelProto:
    """`model` with its external weights read into it, in place: for code that rewrites every weight (FP16)."""
    folder = weights_dir(model)
    if folder is not None:
        onnx.external_data_helper.load_external_data_for_model(model, str(folder))
        props = [p for p in model.metadata_props if p.key != EXTERNAL_DIR]
        del model.metadata_props[:]
        model.metadata_props.extend(props)
    return model


def external_tensor(name: str, data_type: int, dims, location: str, offset: int, length: int) -> onnx.TensorProto:
    """A tensor whose `length` bytes are at `offset` in the data file `location`."""
    t = onnx.TensorProto(name=name, data_type=data_type, dims=dims, data_location=onnx.TensorProto.EXTERNAL)
    for key, value in (("location", location), ("offset", str(offset)), ("length", str(length))):
        entry = t.external_data.add()
        entry.key, entry.value = key, value
    return t


def serializable(model: onnx.ModelProto) -> bool:
    """Whether protobuf can write `model` in one piece (under 2 GB once external weights are left out).

    Measuring costs as much as serializing (upb writes to count: 0.13 s for MiniLM's 90 MB, paid per ONNX Runtime
    session), so a model whose tensors' bytes are far under the limit is not measured."""
    if _tensor_bytes_bound(model) < PROTOBUF_LIMIT // 2:
        return True
    try:
        return model.ByteSize() < PROTOBUF_LIMIT
    except EncodeError:  # upb refuses even to measure past 2 GB
        return False


def _tensor_bytes_bound(model: onnx.ModelProto) -> int:
    """An upper bound on the bytes the graph's tensors take serialized (10 per element of a typed field: a varint's
    most), or the limit itself where a subgraph or sparse tensor would need walking; what else a node holds (names,
    attributes) is left to the half of the limit `serializable` keeps free."""
    graph = model.graph
    if graph.sparse_initializer or any(a.g.node or a.graphs for n in graph.node for a in n.attribute):
        return PROTOBUF_LIMIT

    def size(t: onnx.TensorProto) -> int:
        typed = (len(t.float_data) + len(t.int32_data) + len(t.int64_data) + len(t.double_data)
                 + len(t.uint64_data))
        return len(t.raw_data) + 10 * typed + sum(len(v) for v in t.string_data)

    return (sum(size(t) for t in graph.initializer)
            + sum(size(a.t) for n in graph.node for a in n.attribute if a.HasField("t")))


def skeleton(model: onnx.ModelProto) -> onnx.ModelProto:
    """`model` without its weights' values (each weight says it is in an absent file): what shape inference and the
    checker need, far under 2 GB, copied in milliseconds whatever the model's size."""
    out = _without_initializers(model)
    out.graph.initializer.extend(_slim(model, t) for t in model.graph.initializer)
    for node in out.graph.node:
        value = next((a.t for a in node.attribute if a.name == "value"), None) if node.op_type == "Constant" else None
        slim = _slim(model, value) if value is not None else None
        if slim is not value:
            value.CopyFrom(slim)
    return out


def _slim(model: onnx.ModelProto, t: onnx.TensorProto) -> onnx.TensorProto:
    """A large tensor as a placeholder with its type and shape; a small one with its values (read if external):
    shape constants, which data propagation reads."""
    if np.prod(t.dims) > _VALUES_KEPT:
        return external_tensor(t.name, t.data_type, t.dims, _SKELETON_DATA, 0, 0)
    return onnx.numpy_helper.from_array(values(model, t), t.name) if uses_external_data(t) else t


def _without_initializers(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of `model` but for its graph's initializers (and trtptq's own metadata), which are never copied."""
    out = onnx.ModelProto()
    for message, copy, skip in ((model, out, "graph"), (model.graph, out.graph, "initializer")):
        for field, value in message.ListFields():
            if field.name == skip:
                continue
            if field.name == "metadata_props" and message is model:
                out.metadata_props.extend(p for p in value if p.key != EXTERNAL_DIR)
            elif field.is_repeated:
                getattr(copy, field.name).extend(value)
            elif field.type == field.TYPE_MESSAGE:
                getattr(copy, field.name).CopyFrom(value)
            else:
                setattr(copy, field.name, value)
    return out


PLUGIN_CHECK_DOMAIN = "trtptq.plugin"


def check(model: onnx.ModelProto, what: str) -> None:
    """onnx.checker on a model of any size: its skeleton is checked, from a temp folder that holds an empty file
    where the weights claim to be (the checker wants the file, not its bytes).

    Ops ONNX does not define in its default domain are TensorRT plugins (exporters write EfficientNMS_TRT
    there; TensorRT finds plugins by op type): the checker sees them in a custom domain, as it would any plugin.
    """
    bones = skeleton(model)
    plugins = [n for n in bones.graph.node if not n.domain and not onnx.defs.has(n.op_type)]
    for node in plugins:
        node.domain = PLUGIN_CHECK_DOMAIN
    if plugins:
        bones.opset_import.append(onnx.helper.make_opsetid(PLUGIN_CHECK_DOMAIN, 1))
    with tempfile.TemporaryDirectory(prefix="trtptq-check-") as tmp:
        (pathlib.Path(tmp) / _SKELETON_DATA).touch()
        onnx.save(bones, os.path.join(tmp, "model.onnx"))
        try:
            onnx.checker.check_model(os.path.join(tmp, "model.onnx"))
        except onnx.checker.ValidationError as e:
            raise ModelError(f"{what} fails onnx.checker: {str(e).splitlines()[0]}") from None


def opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 1)


def ensure_opset(model: onnx.ModelProto, minimum: int = _OPSET_FOR_PER_CHANNEL) -> onnx.ModelProto:
    """Upgrade the default-domain opset to `minimum` (per-channel DequantizeLinear needs 13, FP8 19, INT4 blocks 21).

    ONNX's converter runs on the model's skeleton and the weights are put back: it copies whatever it is given
    into C++ and back (all-MiniLM-L6-v2: 0.41 s whole, a few ms as a skeleton), and its adapters read only small
    tensors (shape constants), which a skeleton keeps."""
    if opset(model) >= minimum:
        return model
    from onnx import version_converter

    try:
        converted = version_converter.convert_version(skeleton(model), minimum)
    except Exception as e:
        raise ModelError(f"cannot upgrade the model from opset {opset(model)} to {minimum} ({e}). "
                         f"Re-export it with opset >= {minimum}.") from None
    weights = {t.name: t for t in model.graph.initializer}
    constants = {n.output[0]: a.t for n in model.graph.node if n.op_type == "Constant"
                 for a in n.attribute if a.name == "value"}
    out = _without_initializers(converted)
    # back: what the skeleton stood in for, and the small weights it read from their file (references again)
    out.graph.initializer.extend(weights[t.name] if _placeholder(t) or uses_external_data(weights.get(t.name, t))
                                 else t for t in converted.graph.initializer)
    out.metadata_props.extend(p for p in model.metadata_props if p.key == EXTERNAL_DIR)
    for node in out.graph.node:
        for a in node.attribute:
            if node.op_type == "Constant" and a.name == "value" and _placeholder(a.t):
                a.t.CopyFrom(constants[node.output[0]])
    return out


def _placeholder(t: onnx.TensorProto) -> bool:
    """A large tensor a skeleton stands in for (`_slim`)."""
    return uses_external_data(t) and any(e.key == "location" and e.value == _SKELETON_DATA for e in t.external_data)


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
            n.name = next(c for c in (f"{n.op_type}_{i}" + (f"_{k}" if k else "") for k in itertools.count())
                          if c not in taken)
            taken.add(n.name)
    return out


def save(model: onnx.ModelProto, path: str | os.PathLike) -> pathlib.Path:
    """Write atomically; a model over 2 GB, or one whose weights are in data files, keeps its weights in
    `<name>.data` beside the file, copied there a tensor at a time (never the whole model in memory)."""
    path = pathlib.Path(path)
    if weights_dir(model) is None and serializable(model):
        with fileio.atomic_path(path) as tmp:
            onnx.save(model, str(tmp))
        return path
    data_name = path.name + ".data"
    # Both files are written under temp names, then renamed: the data first, so the model never points at a stale one.
    with fileio.atomic_path(path) as tmp_model, fileio.atomic_path(path.with_name(data_name)) as tmp_data:
        out = _without_initializers(model)
        with open(tmp_data, "wb") as data:
            out.graph.initializer.extend(_write_tensor(model, t, data, data_name) for t in model.graph.initializer)
        onnx.save(out, str(tmp_model))
    return path


def _write_tensor(model: onnx.ModelProto, t: onnx.TensorProto, data, location: str) -> onnx.TensorProto:
    """`t` appended to the open data file `data` (its bytes copied from its own data file if it has one), as a
    reference to it; small inline tensors stay inline."""
    if not uses_external_data(t) and len(t.raw_data) < _EXTERNAL_MIN:
        return t
    data.write(bytes(-data.tell() % _ALIGN))
    offset = data.tell()
    if uses_external_data(t):
        info = ExternalDataInfo(t)
        with open(weights_dir(model) / info.location, "rb") as source:
            source.seek(info.offset or 0)
            left = info.length if info.length is not None else os.fstat(source.fileno()).st_size - source.tell()
            while left > 0:
                chunk = source.read(min(left, _CHUNK))
                if not chunk:
                    raise ModelError(f"external data {info.location} of tensor {t.name} ends early. "
                                     "Check the data file was copied whole.")
                data.write(chunk)
                left -= len(chunk)
    else:
        data.write(t.raw_data)
    return external_tensor(t.name, t.data_type, t.dims, location, offset, data.tell() - offset)


@contextlib.contextmanager
def as_file(model: onnx.ModelProto) -> Iterator[pathlib.Path]:
    """`model` as a file that ONNX Runtime or TensorRT can read, for the duration of the block.

    A model whose weights are in data files is written (graph only: kilobytes) to a hidden temp file in their
    folder, so that its references resolve there (ONNX Runtime refuses a data file outside the model's folder,
    links included); where that folder is read-only, or the model is over 2 GB itself, the model is saved
    whole to a temp folder instead (weights copied, on disk, a tensor at a time).
    """
    folder = weights_dir(model)
    if folder is not None and serializable(model):
        try:
            fd, name = tempfile.mkstemp(prefix=".trtptq-", suffix=".onnx", dir=folder)
        except OSError:
            fd = None
        if fd is not None:
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(model.SerializeToString())
                yield pathlib.Path(name)
            finally:
                os.unlink(name)
            return
    with tempfile.TemporaryDirectory(prefix="trtptq-") as tmp:
        yield save(model, pathlib.Path(tmp) / "model.onnx")


def float_tensors(model: onnx.ModelProto, names: set[str]) -> set[str]:
    """The names whose inferred type is float (unknown types count as float)."""
    try:
        inferred = onnx.shape_inference.infer_shapes(skeleton(model))
        types = {vi.name: vi.type.tensor_type.elem_type for vi in
                 [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]}
    except Exception:  # noqa: BLE001 - inference may refuse custom ops
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


class WeightFile:
    """Large tensors the models of one run share (the quantized weights of --method auto's probe and candidates, of
    sensitivity's gated model), each computed once and written to a hidden data file (`.trtptq-*.data`) in the
    folder of the source model's own data: every model refers to it, and ONNX Runtime maps it, as it maps the FP32
    weights, instead of each model and each session holding a copy in memory. The file is created at the first
    tensor and removed with this object (or at exit); only models that do not outlive it may refer to it.
    """

    def __init__(self, folder: pathlib.Path):
        self.folder = folder
        self.path: pathlib.Path | None = None
        self._file = None
        self._tensors: dict[Hashable, tuple[onnx.TensorProto, object]] = {}

    def __reduce__(self):
        """Sent to another process (a Ray worker), an empty one for the same folder: it writes its own file."""
        return WeightFile, (self.folder,)

    @classmethod
    def beside(cls, model: onnx.ModelProto) -> WeightFile | None:
        """One for `model`'s weights folder; None for a model without external data (its weights are in memory
        anyway) or a folder this process cannot write to (the tensors then stay in each model, as before)."""
        folder = weights_dir(model)
        return cls(folder) if folder is not None and os.access(folder, os.W_OK) else None

    def tensor(self, key: Hashable, name: str, make: Callable[[], tuple[np.ndarray, object]]) -> tuple[onnx.TensorProto, object]:
        """(A reference named `name` to the values `make` returns, whatever else it returns beside them); `make` runs
        once per `key`, its values written to the file."""
        if key not in self._tensors:
            values, extra = make()
            self._tensors[key] = (self._write(values), extra)
        reference, extra = self._tensors[key]
        out = onnx.TensorProto()
        out.CopyFrom(reference)
        out.name = name
        return out, extra

    def _write(self, values: np.ndarray) -> onnx.TensorProto:
        if self._file is None:
            fd, name = tempfile.mkstemp(prefix=".trtptq-", suffix=".data", dir=self.folder)
            self._file, self.path = os.fdopen(fd, "wb"), pathlib.Path(name)
            weakref.finalize(self, _remove, self._file, self.path)
        packed = onnx.numpy_helper.from_array(values)  # onnx's own layout (INT4 packed two to a byte)
        self._file.write(bytes(-self._file.tell() % _ALIGN))
        offset = self._file.tell()
        self._file.write(packed.raw_data)
        self._file.flush()
        return external_tensor("", packed.data_type, packed.dims, self.path.name, offset, len(packed.raw_data))


def _remove(file, path: pathlib.Path) -> None:
    file.close()
    path.unlink(missing_ok=True)
