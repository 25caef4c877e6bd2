"""The package's shape: its import graph has no circles, counting imports inside functions too (a module
that imports another only when called still depends on it), and the checkpoint module builds
models without importing any training loop."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "ghns"


def module_names() -> dict[str, Path]:
    out = {}
    for f in PACKAGE.rglob("*.py"):
        parts = f.relative_to(PACKAGE.parent).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = f
    return out


def imports(path: Path, modules: dict[str, Path]) -> set[str]:
    """The ghns modules ``path`` imports anywhere (``from a.b import c`` counts as ``a.b.c`` when
    that is a module, else as ``a.b``); ``if TYPE_CHECKING:`` blocks do not count."""
    tree = ast.parse(path.read_text())
    skip = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
            for child in node.body for n in ast.walk(child)}
    found = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("ghns"):
            found |= {f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules else node.module
                      for a in node.names}
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("ghns")}
    return {m for m in found if m in modules and m != "ghns"}


def graph() -> dict[str, set[str]]:
    modules = module_names()
    return {name: imports(path, modules) for name, path in modules.items()}


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (or a module importing itself)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in g[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1 or v in g[v]:
                out.append(sorted(comp))

    for v in sorted(g):
        if v not in index:
            visit(v)
    return out


def test_the_cycle_finder_finds_a_planted_circle():
    g = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": {"e"}}
    assert sorted(cycles(g)) == [["a", "b", "c"], ["e"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_the_package_has_no_import_circles():
    g = graph()
    assert "ghns.checkpoint" in g and "ghns.models.registry" in g["ghns.checkpoint"]  # the reader works
    assert cycles(g) == []


def test_checkpoint_imports_no_training_module():
    g = graph()
    seen, todo = set(), ["ghns.checkpoint"]
    while todo:  # everything the checkpoint module reaches, directly or not
        m = todo.pop()
        for n in g[m] - seen:
            seen.add(n)
            todo.append(n)
    training = {m for m in seen if m.startswith(("ghns.train.", "ghns.train_parts", "ghns.generate", "ghns.train_final", "ghns.localize"))}
    assert training == set(), training


def test_no_function_is_longer_than_60_lines():
    """A function that does not fit on a screen is split into named steps."""
    long = []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno is not None:
                if node.end_lineno - node.lineno + 1 > 60:
                    long.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno} {node.name}")
    assert long == []
