"""Atomic file output: write to a temp file beside the target, then rename over it."""

from __future__ import annotations

import contextlib
import os
import pathlib
import tempfile
from collections.abc import Iterator

from trtptq.core.errors import TrtptqError


def check_writable(path: str | os.PathLike) -> pathlib.Path:
    """Fail early, before long work, if `path` cannot be written."""
    path = pathlib.Path(path)
    parent = path.parent if str(path.parent) else pathlib.Path(".")
    existing = next(p for p in (parent, *parent.parents) if p.exists())
    if not existing.is_dir():
        raise TrtptqError(f"cannot create the folder for {path}: {existing} is a file. Choose another output path.")
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise TrtptqError(f"cannot create the folder for {path}: {e.strerror}. Choose another output path.") from None
    if path.is_dir():
        raise TrtptqError(f"{path} is a folder; give a file name for the output.")
    try:  # a real probe, not os.access: root passes access() on read-only folders, and mounts can be read-only
        fd, probe = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=parent)
    except OSError as e:
        raise TrtptqError(f"cannot write {path}: folder {parent} is not writable ({e.strerror}). "
                          "Choose another output path.") from None
    os.close(fd)
    os.unlink(probe)
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[pathlib.Path]:
    """Yield a temp path in the target folder; on success it replaces `path`, on error it vanishes."""
    path = check_writable(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; outputs get the usual permissions
    tmp_path = pathlib.Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        tmp_path.unlink(missing_ok=True)


def write_text(path: str | os.PathLike, text: str) -> pathlib.Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return pathlib.Path(path)


def write_bytes(path: str | os.PathLike, data: bytes) -> pathlib.Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return pathlib.Path(path)
