"""`load(path)`: one model object for servers, whether the file is an ONNX model (ONNX Runtime) or a TensorRT engine.

The file is looked at first: one that is not what its name promises (a text
file named .engine, an engine named .onnx, an empty file) is one line saying
what it is and what was expected, before ONNX Runtime or pycuda start.
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import Sequence

from trtptq.core.errors import ModelError, TrtptqError
from trtptq.plugins import BUILTIN, Plugins
from trtptq.runtime.base import Model

ENGINE_MAGIC = (b"ftrt", b"vtrt")  # first bytes seen on TensorRT 10 and TensorRT-RTX 1.7 engines
_HEAD = 256  # bytes read to tell what a file is


def load(path: str | os.PathLike, *, instances: int = 1, backend: str | None = None, providers: Sequence[str] | None = None,
         plugins: Sequence[str] = (), name: str | None = None, registry: Plugins = BUILTIN) -> Model:
    """The model at `path`: `.onnx` runs in ONNX Runtime, anything else is a serialized TensorRT engine.

    Engines: `instances` execution contexts per optimization profile (each with
    its own stream and buffers) serve that many calls at once; the manifest
    beside the engine is checked first; `backend` (tensorrt | tensorrt_rtx)
    defaults to the one the manifest names. ONNX: `providers` default to CUDA
    where installed, then CPU. `registry` (from `--plugin` files) runs an ONNX
    model's plugin ops and adds its TensorRT libraries to `plugins` for engines.
    """
    path = pathlib.Path(path)
    if not path.is_file():
        raise TrtptqError(f"model {path} does not exist.")
    if instances < 1:
        raise TrtptqError(f"instances={instances} is not a positive number; give at least 1 execution context.")
    check_file(path)
    if path.suffix == ".onnx":
        from trtptq.runtime.ort import OnnxModel

        return OnnxModel(path, providers=providers, name=name, plugins=registry)
    from trtptq.runtime.engine import EngineModel

    libraries = tuple(dict.fromkeys([*map(str, plugins), *registry.trt_libraries]))
    return EngineModel(path, instances=instances, backend=backend, plugins=libraries, name=name)


def check_file(path: pathlib.Path) -> None:
    """A ModelError naming what the file is, where it is not what its name says (`.onnx`: ONNX, else an engine).

    A protobuf that is not ONNX is left to the ONNX loader, whose error is one line too.
    """
    with open(path, "rb") as f:
        head = f.read(_HEAD)
    found = describe(head)
    if path.suffix == ".onnx":
        if found is not None:
            hint = ("; name it .engine to run it on the GPU" if head.startswith(ENGINE_MAGIC) else
                    "; give the .onnx file your framework exported")
            raise ModelError(f"{path} is {found}, not an ONNX model{hint}.")
    elif found is not None and not head.startswith(ENGINE_MAGIC):
        # Only what is recognizably something else is refused here: other binary data goes to TensorRT, which
        # knows its own formats (their magic differs between versions) and whose refusal is one line too.
        raise ModelError(f"{path} is {found}, where a file not named .onnx must be a TensorRT engine; give an engine "
                         "written by trtptq build, or an ONNX model named .onnx.")


def describe(head: bytes) -> str | None:
    """What the first bytes of a file say it is, for the formats a user mixes up; None for other binary data."""
    if not head:
        return "an empty file"
    if head.startswith(ENGINE_MAGIC):
        return "a serialized TensorRT engine"
    if head.startswith(b"PK\x03\x04"):
        return "a zip archive (an .npz data file?)"
    if head.startswith(b"\x93NUMPY"):
        return "a numpy .npy array"
    try:
        text = head.decode()
    except UnicodeDecodeError:  # a multi-byte character cut at the end of the head still counts as text
        try:
            text = head[:-3].decode()
        except UnicodeDecodeError:
            return None
    if text and all(c.isprintable() or c.isspace() for c in text):
        first = text.strip().splitlines()[0][:40] if text.strip() else ""
        return "a JSON file" if first.startswith(("{", "[")) else f"a text file (starting {first!r})"
    return None
