"""User Python files (`--data load.py`, `--plugin my_plugins.py`): imported by path, their errors as one line.

A mistake in the user's file is reported as `file:line: Error: message`, the
line being the innermost frame in that file, not as our traceback.
"""

from __future__ import annotations

import importlib.util
import os
import pathlib
import traceback
from collections.abc import Sequence
from types import ModuleType

from trtptq.core.errors import TrtptqError
from trtptq.plugins import BUILTIN, PluginOp, Plugins


def one_line(e: BaseException) -> str:
    return f"{type(e).__name__}: {' '.join(str(e).split())}"


def where(path: str | os.PathLike, e: BaseException) -> str:
    """`path:line` of the innermost frame of `e` in the file itself (a SyntaxError carries its own line)."""
    script = os.path.realpath(path)
    if isinstance(e, SyntaxError) and e.filename and os.path.realpath(e.filename) == script:
        return f"{path}:{e.lineno}"
    lines = [f.lineno for f in traceback.extract_tb(e.__traceback__) if os.path.realpath(f.filename) == script]
    return f"{path}:{lines[-1]}" if lines else str(path)


def import_script(path: str | os.PathLike, error: type[TrtptqError], what: str) -> ModuleType:
    """The module of the Python file `path`; a file that is missing or fails to import is one `error` line."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise error(f"{what} {path} does not exist.")
    spec = importlib.util.spec_from_file_location(f"_trtptq_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as e:
        raise error(f"{what} {where(path, e)} failed to import: {one_line(e)}. Fix the script or what it imports.") from e
    return module


def load_plugins(paths: Sequence[str | os.PathLike] = (), base: Plugins = BUILTIN) -> Plugins:
    """`base` (the built-in plugin ops) plus the `PLUGINS` list of each plugin file, in order (later ones win)."""
    plugins = base
    for path in paths:
        module = import_script(path, TrtptqError, "plugin file")
        ops = getattr(module, "PLUGINS", None)
        if not isinstance(ops, (list, tuple)) or not all(isinstance(p, PluginOp) for p in ops):
            raise TrtptqError(f"plugin file {path} must define PLUGINS = [PluginOp(...), ...] "
                              "(from trtptq.plugins import PluginOp).")
        plugins = plugins.with_ops(ops, str(path))
    return plugins
