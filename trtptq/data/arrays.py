"""Reading .npz/.npy files a few samples at a time, so memory stays flat in the size of the file.

Uncompressed members (np.savez, .npy) are memory-mapped one chunk at a time
(the map, and its pages, go when the chunk's batch is done); compressed ones
(np.savez_compressed) are decompressed as a stream. A file holding a single
sample (no batch axis) is read whole, as it is small. Nothing is unpickled.
"""

from __future__ import annotations

import pathlib
import struct
import zipfile
from collections.abc import Iterator, Mapping
from contextlib import ExitStack
from dataclasses import dataclass

import numpy as np

from trtptq.core.errors import DataError

CHUNK_BYTES = 16 << 20  # bytes of samples (all arrays together) per chunk
_LOCAL_HEADER = struct.Struct("<4s5H3I2H")  # a zip entry's local header; its last two fields: name and extra lengths


@dataclass
class _Member:
    name: str | None  # None: a bare .npy's one array
    shape: tuple[int, ...]
    dtype: np.dtype
    fortran: bool
    offset: int | None  # where its data starts in the file when stored uncompressed; None: compressed
    info: zipfile.ZipInfo | None  # its zip entry (None for a .npy)

    @property
    def row_bytes(self) -> int:
        return int(np.prod(self.shape[1:], dtype=np.int64)) * self.dtype.itemsize


def read_chunks(path: pathlib.Path, ranks: Mapping[str, int], default_name: str | None) -> Iterator[dict[str, np.ndarray]]:
    """The arrays of `path`, chunk by chunk along the sample axis; `ranks`: each model input's rank (with batch axis),
    which tells a single sample (one axis fewer) from a batch. A .npy feeds `default_name` (the model's only input)."""
    try:
        members = _members(path)
        if path.suffix == ".npy" and default_name is None:
            raise DataError(f"{path} is a bare .npy but the model has several inputs; save an .npz keyed by input "
                            "name instead.")
        if _batched(members, ranks):
            yield from _chunks(path, members, default_name)
        else:
            yield _whole(path, default_name)
    except DataError:
        raise
    except Exception as e:
        raise DataError(f"cannot read {path} ({type(e).__name__}: {e}). Is it a valid .npz/.npy file?") from None


def _members(path: pathlib.Path) -> list[_Member]:
    if path.suffix == ".npy":
        with open(path, "rb") as f:
            shape, fortran, dtype = _header(path, f)
            return [_Member(None, shape, dtype, fortran, f.tell(), None)]
    members = []
    with zipfile.ZipFile(path) as zf, open(path, "rb") as raw:
        for info in zf.infolist():
            with zf.open(info) as f:
                shape, fortran, dtype = _header(path, f)
                header = f.tell()
            offset = None
            if info.compress_type == zipfile.ZIP_STORED:
                raw.seek(info.header_offset)
                fields = _LOCAL_HEADER.unpack(raw.read(_LOCAL_HEADER.size))
                offset = info.header_offset + _LOCAL_HEADER.size + fields[-2] + fields[-1] + header
            members.append(_Member(info.filename.removesuffix(".npy"), shape, dtype, fortran, offset, info))
    return members


def _header(path: pathlib.Path, f) -> tuple[tuple[int, ...], bool, np.dtype]:
    version = np.lib.format.read_magic(f)
    read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    shape, fortran, dtype = read(f)
    if dtype.hasobject:
        raise DataError(f"{path} holds Python objects (a pickled array), which trtptq does not load; save plain "
                        "numeric arrays (np.savez).")
    return shape, fortran, dtype


def _batched(members: list[_Member], ranks: Mapping[str, int]) -> bool:
    """Every array has the same number of samples along axis 0, and every input has its batch axis."""
    if not members or any(m.fortran or not m.shape for m in members):
        return False
    if len({m.shape[0] for m in members}) > 1:
        return False
    return all(len(m.shape) == ranks.get(m.name, len(m.shape)) for m in members if m.name is not None)


def _chunks(path: pathlib.Path, members: list[_Member], default_name: str | None) -> Iterator[dict[str, np.ndarray]]:
    total = members[0].shape[0]
    step = max(1, CHUNK_BYTES // max(1, sum(m.row_bytes for m in members)))
    with ExitStack() as stack:
        zf = stack.enter_context(zipfile.ZipFile(path)) if path.suffix == ".npz" else None
        streams = {m.name: _stream(stack, zf, m) for m in members if m.offset is None}
        for start in range(0, total, step):
            rows = min(step, total - start)
            chunk = {}
            for m in members:
                shape = (rows, *m.shape[1:])
                if m.offset is not None:
                    chunk[m.name or default_name] = np.memmap(path, m.dtype, "r", m.offset + start * m.row_bytes, shape)
                else:
                    data = streams[m.name].read(rows * m.row_bytes)
                    chunk[m.name or default_name] = np.frombuffer(data, m.dtype).reshape(shape)
            yield chunk


def _stream(stack: ExitStack, zf: zipfile.ZipFile, member: _Member):
    """The member's data as a stream, past its .npy header."""
    f = stack.enter_context(zf.open(member.info))
    _header(pathlib.Path(zf.filename or ""), f)
    return f


def _whole(path: pathlib.Path, default_name: str | None) -> dict[str, np.ndarray]:
    if path.suffix == ".npy":
        return {default_name: np.load(path, allow_pickle=False)}
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}
