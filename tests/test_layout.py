"""The package's shape: `import trtptq` works the same from the checkout and installed, and no module imports
another that imports it back (function-local imports included; the layer contracts in pyproject.toml cover the
stages, this covers the modules inside each)."""

import ast
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).parents[1]
PACKAGE = ROOT / "trtptq"


@pytest.mark.parametrize("where", ["checkout", "elsewhere"])
def test_import_trtptq_from_the_checkout_and_from_elsewhere(where, tmp_path):
    """From the repository root, ./trtptq is what Python imports: calibrators/ and plugins/ must come with it."""
    cwd = ROOT if where == "checkout" else tmp_path
    code = ("import trtptq, trtptq.calibrators, trtptq.plugins, trtptq.plugins.efficient_nms, pathlib\n"
            "from trtptq import CalibrationOptions\n"
            "print(pathlib.Path(trtptq.__file__).resolve().parent)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=cwd)
    assert r.returncode == 0, r.stderr
    if where == "checkout":
        assert r.stdout.strip() == str(PACKAGE.resolve())


def _module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, pathlib.Path]:
    """Every module of the package, the linked calibrators/ and plugins/ included, by dotted name."""
    return {_module_name(p): p for p in PACKAGE.rglob("*.py")}


def _imports(name: str, path: pathlib.Path, modules: dict[str, pathlib.Path]) -> set[str]:
    """The package's modules that `name` imports anywhere in its file (the module itself, where `from m import x`
    names a function rather than a submodule)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1] + ([base] if base else []))
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
        else:
            continue
        found |= {t for t in targets if t in modules and t != name}
    return found


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycles():
    modules = _modules()
    # A package's __init__ that re-exports its modules is not a cycle with them: the edge to it is the package.
    graph = {name: {m for m in _imports(name, path, modules) if not name.startswith(m + ".")}
             for name, path in modules.items()}
    assert _cycles(graph) == []


def test_the_cycle_finder_finds_cycles():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []
