"""The shape the code keeps (issue 15's limits), read from the source with ``ast``: small
modules and functions, no import cycles (lazy imports count), no private name imported
across modules, and no backend asked what it can do by probing or by its name."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from functools import cache
from pathlib import Path

from leaks import PROJECT

HARNESS = PROJECT / "harness"
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60
BACKEND_NAMES = {"netns", "qemu", "xen"}


def module_name(path: Path) -> str:
    parts = path.relative_to(PROJECT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@cache
def modules() -> dict[str, ast.Module]:
    return {module_name(p): ast.parse(p.read_text(), str(p)) for p in HARNESS.rglob("*.py")}


def imports(tree: ast.Module) -> Iterator[tuple[str, list[str]]]:
    """(module, names) of every harness import, at the top or inside a function."""
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module.startswith("harness"):
                yield node.module, [a.name for a in node.names]
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("harness"):
                    yield a.name, []


def test_modules_and_functions_are_small() -> None:
    lines = {module_name(p): len(p.read_text().splitlines()) for p in HARNESS.rglob("*.py")}
    assert len(lines) > 50 and {m: n for m, n in lines.items() if n > MAX_MODULE_LINES} == {}
    long = [
        f"{name}.{node.name} ({node.end_lineno - node.lineno + 1} lines)"
        for name, tree in modules().items() for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.end_lineno
        and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES
    ]
    assert long == []


def import_graph() -> dict[str, set[str]]:
    mods = modules()
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for name, tree in mods.items():
        for target, names in imports(tree):
            for n in names or [""]:
                sub = f"{target}.{n}"
                dep = sub if sub in mods else target
                # A package's own __init__ re-exporting its modules is not a cycle.
                if dep in mods and dep != name and not dep.startswith(f"{name}."):
                    graph[name].add(dep)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
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
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_no_import_cycles() -> None:
    graph = import_graph()
    assert graph["harness.lab"]  # the graph is really read
    assert cycles(graph) == []


def test_the_cycle_finder_finds_cycles() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_private_name_imported_across_modules() -> None:
    private = [f"{name}: from {target} import {n}"
               for name, tree in modules().items() for target, names in imports(tree)
               for n in names if n.startswith("_") and n != "__version__"]
    assert private == []


def probes(tree: ast.Module) -> list[str]:
    """``getattr``/``hasattr`` on a backend, and comparisons of a name or scheme with a
    backend's name."""
    found = []
    for node in ast.walk(tree):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
                and node.func.id in ("getattr", "hasattr") and node.args
                and "backend" in ast.unparse(node.args[0])):
            found.append(ast.unparse(node))
        if isinstance(node, ast.Compare) and any(
                (isinstance(c, ast.Constant) and c.value in BACKEND_NAMES)
                or (isinstance(c, ast.Tuple | ast.Set)
                and {getattr(e, "value", None) for e in c.elts} & BACKEND_NAMES)
                for c in node.comparators):
            left = ast.unparse(node.left)
            if "name" in left or "scheme" in left:
                found.append(ast.unparse(node))
    return found


def test_the_probe_finder_finds_probes() -> None:
    code = ("getattr(self.backend, 'footprint', None)\n"
            "backend.name in ('qemu', 'xen')\nurl.scheme == 'netns'\nisinstance(b, CanKill)")
    assert len(probes(ast.parse(code))) == 3


def test_no_backend_asked_by_probe_or_by_name() -> None:
    """Capabilities are Protocols (``isinstance``), needs are declared attributes."""
    found = [f"{name}: {p}" for name, tree in modules().items() for p in probes(tree)]
    assert found == []
