"""No import cycles between the package's modules.

A cycle fails at import time ("partially initialized module") only when one particular module of
it is imported first, and a cycle hidden in a function-level import waits for the first call; so
this reads every ``import`` of the source (module level and inside functions, not under
``TYPE_CHECKING``) and looks for cycles in the module graph. Imports of the package root are left
out: ``metricattack/__init__.py`` re-exports names lazily, on first use.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "metricattack"


def module_names() -> dict[str, Path]:
    names = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        names[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return names


def imported_modules(name: str, path: Path, known: set[str]) -> set[str]:
    """The package's modules that ``name`` imports (``from X import m`` of a submodule ``m`` counts as ``X.m`` only)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skipped = {
        id(n)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
        for stmt in node.body
        for n in ast.walk(stmt)
    }
    targets: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
            source = ".".join([*base, *([node.module] if node.module else [])])
            for alias in node.names:
                targets.add(f"{source}.{alias.name}" if f"{source}.{alias.name}" in known else source)
    return {t for t in targets if t in known and t not in (name, "metricattack")}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_cycles() -> None:
    names = module_names()
    graph = {name: imported_modules(name, path, set(names)) for name, path in names.items()}
    # the walk sees imports: absolute-relative, ``from . import module`` and function-level ones
    assert len(graph) > 50 and graph["metricattack.metrics.learned"] >= {"metricattack.metrics.xqda"}
    assert graph["metricattack.benchmark.runner"] >= {"metricattack.benchmark.resources", "metricattack.benchmark.experiments"}
    assert "metricattack.benchmark.resources" in graph["metricattack.benchmark.experiments.table5"]
    assert cycles(graph) == [], f"import cycles: {cycles(graph)}"


def test_a_cycle_is_found() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c"]]
