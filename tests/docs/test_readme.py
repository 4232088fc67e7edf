"""The examples of README.md and docs/*.md run as written, and print what the docs show.

Each file is run top to bottom in a fresh folder holding trtptq-demo/ (what README command 1 leaves): every
```python block as `python -c` (so `import trtptq` resolves as it does for a user there), every `trtptq ...`
line of a ```bash block through the installed command. A ```text block after a code block (before the next
one) shows lines of that block's output: each must appear in it, `...` standing for anything and runs of
spaces for any width. Each file runs twice: in a copy of the checkout (where its `trtptq/` folder shadows the
installed package) and in a folder outside it. Sections whose heading names a GPU are skipped (they need one;
their code paths have gpu-marked tests), and so is a block right after `<!-- not run: reason -->`.
"""

from __future__ import annotations

import os
import pathlib
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass

import pytest

from support import needs_rtx, trtptq

pytestmark = pytest.mark.slow

ROOT = pathlib.Path(__file__).parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
CHECKOUT = ("trtptq", "calibrators", "plugins")  # what `import trtptq` reads from a checkout
NOT_RUN = "<!-- not run:"


@dataclass
class Block:
    heading: str
    language: str
    code: str
    expected: list[str]  # lines of the ```text block that follows, if any
    run: bool


def _blocks(doc: pathlib.Path) -> list[Block]:
    """The fenced blocks of `doc` in order, with the expected output attached to the block it follows."""
    blocks, heading, skip_next = [], "", False
    lines = iter(doc.read_text().splitlines())
    for line in lines:
        if re.match(r"#{1,4} ", line):
            heading = line
        elif line.startswith(NOT_RUN):
            skip_next = True
        elif line.startswith("```"):
            language, body = line[3:].strip(), []
            for inner in lines:
                if inner.startswith("```"):
                    break
                body.append(inner)
            if language == "text" and blocks and blocks[-1].heading == heading and not blocks[-1].expected:
                blocks[-1].expected = body
            else:
                blocks.append(Block(heading, language, "\n".join(body) + "\n", [], not skip_next and "GPU" not in heading))
            skip_next = False
    return blocks


def _commands(code: str) -> list[str]:
    """The `trtptq ...` commands of a bash block (continuation lines joined, comments dropped, `&&` split)."""
    lines = (line.split("#")[0] for line in code.replace("\\\n", " ").splitlines())
    return [part.strip() for line in lines for part in line.split("&&") if part.strip().startswith("trtptq ")]


def _spaces(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


def _missing(expected: list[str], output: str) -> list[str]:
    """The expected lines no output line matches (`...` matches anything, whitespace runs match any width)."""
    out_lines = [_spaces(line) for line in output.splitlines()]
    missing = []
    for line in expected:
        if _spaces(line) in ("", "..."):
            continue
        pattern = ".*".join(re.escape(part) for part in _spaces(line).split("..."))
        if not any(re.search(pattern, out) for out in out_lines):
            missing.append(line)
    return missing


def _folder(tmp_path: pathlib.Path, demo: pathlib.Path, where: str) -> pathlib.Path:
    """A folder with trtptq-demo/ (hard links: examples replace files atomically, never edit them) and, for
    "checkout", the checkout's package folders as a clone has them."""
    folder = tmp_path / where
    shutil.copytree(demo, folder / "trtptq-demo", copy_function=os.link)
    if where == "checkout":
        ignore = shutil.ignore_patterns("__pycache__")
        for name in CHECKOUT:
            shutil.copytree(ROOT / name, folder / name, symlinks=True, ignore=ignore)
    return folder


def _python(code: str, cwd: pathlib.Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "MPLBACKEND": "Agg"}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=cwd, env=env, timeout=600)


def test_docs_have_examples():
    """README shows one run example per command, --target, and a build with a dynamic-batch profile."""
    commands = [c for b in _blocks(DOCS[0]) if b.run and b.language == "bash" for c in _commands(b.code)]
    for name in ("demo", "calibrate", "quantize", "sensitivity", "build", "compare", "run", "bench", "export triton"):
        assert any(c.startswith(f"trtptq {name} ") or c == f"trtptq {name}" for c in commands), name
    assert any(" --target " in c for c in commands) and any(c.startswith("trtptq build ") and " --shapes " in c
                                                           for c in commands)


@pytest.mark.parametrize("doc", DOCS, ids=lambda d: d.name)
def test_links_resolve(doc):
    """Relative links point at files of the repository, and their #anchors at headings there."""
    for target, anchor in re.findall(r"\]\((?!https?:)([^)#\s]*)(?:#([^)\s]+))?\)", doc.read_text()):
        path = (doc.parent / target).resolve() if target else doc
        assert path.exists(), f"{doc.name}: {target}"
        if anchor and path.suffix == ".md":
            slugs = {re.sub(r"[^\w\- ]", "", h.lower()).strip().replace(" ", "-")
                     for h in re.findall(r"^#+ (.*)$", path.read_text(), flags=re.M)}
            assert anchor in slugs, f"{doc.name}: {target}#{anchor}"


@pytest.mark.parametrize("where", ["checkout", "elsewhere"])
def test_import_from_checkout_and_elsewhere(demo_dir, tmp_path, where):
    """`import trtptq` gives the whole package (calibrators and plugins included) in a checkout, from its
    own folders, and anywhere else, from the installed package."""
    folder = _folder(tmp_path, demo_dir[0] / "trtptq-demo", where)
    r = _python("import trtptq, trtptq.calibrators, trtptq.plugins\nprint(trtptq.plugins.__file__)", folder)
    assert r.returncode == 0, r.stderr
    assert (str(folder) in r.stdout) == (where == "checkout"), r.stdout


@pytest.mark.parametrize("where", ["checkout", "elsewhere"])
@pytest.mark.parametrize("doc", DOCS, ids=lambda d: d.name)
@needs_rtx  # the examples build engines, and later ones use them
def test_examples_run_as_written(demo_dir, tmp_path, doc, where):
    root, demo = demo_dir
    folder = _folder(tmp_path, root / "trtptq-demo", where)
    for block in _blocks(doc):
        if not block.run or block.language not in ("python", "bash"):
            continue
        where_ = f"{doc.name} {block.heading!r}"
        if block.language == "python":
            r = _python(block.code, folder)
            assert r.returncode == 0, f"{where_}:\n{block.code}\n{r.stderr}"
            output = r.stdout + r.stderr
        else:
            output = ""
            for command in _commands(block.code):
                if command.startswith("trtptq demo"):  # run once per session by the demo_dir fixture
                    output += demo.stdout + demo.stderr
                    continue
                args = shlex.split(command)[1:]
                r = trtptq(*args, *["--no-progress"] * ("--no-progress" not in args), cwd=folder)
                assert r.returncode == 0 and "Traceback" not in r.stderr, f"{where_}: {command}\n{r.stderr}"
                output += r.stdout + r.stderr
        missing = _missing(block.expected, output)
        assert not missing, f"{where_}: not printed: {missing}\n--- printed:\n{output}"
