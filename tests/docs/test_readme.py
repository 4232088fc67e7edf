"""The README's examples run as written: its Python blocks, and its `trtptq ...` command lines, in the folder
`trtptq demo` leaves behind (the README points every example at trtptq-demo/).

Sections about GPUs are skipped here (they need a GPU, pycuda or TensorRT <= 10; their code paths have their
own gpu-marked tests).
"""

import pathlib
import re
import shlex

import pytest

from support import trtptq

README = pathlib.Path(__file__).parents[2] / "README.md"


def _blocks(language: str) -> list[tuple[str, str]]:
    """(section heading, code) of every fenced block in `language`, outside sections about GPUs."""
    out, heading = [], ""
    for part in re.split(r"^(## .*)$", README.read_text(), flags=re.M):
        if part.startswith("## "):
            heading = part
            continue
        if "GPU" not in heading:
            out += [(heading, code) for code in re.findall(rf"```{language}\n(.*?)```", part, flags=re.S)]
    return out


def _commands() -> list[str]:
    """Every `trtptq ...` command of the README's bash blocks (continuation lines joined), but the demo itself."""
    commands = []
    for _, code in _blocks("bash"):
        for line in code.replace("\\\n", " ").splitlines():
            line = line.split("#")[0].strip()
            if line.startswith("trtptq ") and not line.startswith("trtptq demo"):
                commands.append(line)
    return commands


def test_readme_has_examples():
    assert len(_blocks("python")) >= 3 and len(_commands()) >= 6


def test_python_blocks_run_as_written(demo_dir, monkeypatch):
    root, _ = demo_dir
    monkeypatch.chdir(root)
    namespace: dict = {}
    for heading, code in _blocks("python"):
        exec(compile(code, f"README.md {heading}", "exec"), namespace)  # noqa: S102 - the README is ours


@pytest.mark.parametrize("command", _commands())
def test_commands_run_as_written(demo_dir, command):
    root, _ = demo_dir
    args = shlex.split(command)[1:]
    r = trtptq(*args, *["--no-progress"] * ("--no-progress" not in args), cwd=root)
    assert "Traceback" not in r.stderr, r.stderr
    # compare exits 1 when a --fail-below check fails: that is its answer, not an error
    assert r.returncode == 0 or (r.returncode == 1 and command.startswith("trtptq compare")), r.stderr
