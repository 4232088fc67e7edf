"""User Python files (`--data load.py`, `--plugin my_plugins.py`): imported by path, their errors as one line.

A mistake in the user's file is reported as `file:line: Error: message`, the
line being the innermost frame in that file, not as our traceback.
"""

from __future__ import annotations

import importlib.util
import os
import pathlib
import traceback
from collections.abc import Callable, Sequence
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


def load_function(spec: str, flag: str, what: str) -> Callable:
    """The function `fn` of `spec` = 'file.py:fn', imported by path; a missing file, a file that fails to import, or
    no callable `fn` in it is one line naming `flag`."""
    path, sep, name = spec.rpartition(":")
    if not sep or not path.endswith(".py") or not name.isidentifier():
        raise TrtptqError(f"{flag} {spec!r} is not FILE.py:FUNCTION; give e.g. {flag} my_metric.py:{what}.")
    module = import_script(path, TrtptqError, f"{flag} file")
    fn = getattr(module, name, None)
    if not callable(fn):
        found = sorted(k for k, v in vars(module).items() if callable(v) and not k.startswith("_"))
        raise TrtptqError(f"{flag} {spec}: {path} defines no function {name}"
                          f"{' (it has ' + ', '.join(found) + ')' if found else ''}; name the function to call.")
    return fn


SNR = "snr"  # --metric's default: output SNR vs FP32


def metric(spec: str, flag: str = "--metric") -> tuple[str, int | Callable | None]:
    """What a --metric means: ('snr', None), ('argmax', axis) for 'argmax' / 'argmax:AXIS' (default axis -1), or
    ('function', fn) for 'file.py:fn'; anything else is one line naming `flag`."""
    if spec == SNR:
        return SNR, None
    kind, _, axis = spec.partition(":")
    if kind == "argmax":
        try:
            return kind, int(axis or -1)
        except ValueError:
            raise TrtptqError(f"{flag} {spec!r}: {axis!r} is not an axis; give {flag} argmax:1 (the class axis of the "
                              "outputs), or argmax for the last axis.") from None
    if ":" not in spec:
        raise TrtptqError(f"{flag} {spec!r} is not a metric; give snr, argmax[:AXIS] or FILE.py:FUNCTION.")
    return "function", load_function(spec, flag, "score")
