"""The package's modules import each other without a circle (issue #13).

Every import statement counts: at module level, inside a function, under TYPE_CHECKING. A
lazy import hides a circle from Python but not from a reader, who still has to know both
modules to understand either.
"""

from __future__ import annotations

import ast
from pathlib import Path

import distributed_o2o

ROOT = Path(distributed_o2o.__file__).parent.parent


def _modules() -> dict[str, Path]:
    found = {}
    for path in (ROOT / "distributed_o2o").rglob("*.py"):
        name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
        found[name.removesuffix(".__init__")] = path
    return found


def _import_graph(modules: dict[str, Path]) -> dict[str, set[str]]:
    """Module -> the package modules it imports (a name imported from a package: the package)."""

    def resolve(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imported = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                imported = [f"{node.module}.{alias.name}" for alias in node.names]
            else:
                continue
            for target in filter(None, map(resolve, imported)):
                if target != name and not name.startswith(target + "."):  # its own package: not a circle
                    graph[name].add(target)
    return graph


def _circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    circles = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for other in graph[node]:
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while not component or component[-1] != node:
                component.append(stack.pop())
            if len(component) > 1:
                circles.append(sorted(component))

    for node in graph:
        if node not in index:
            visit(node)
    return circles


def test_the_graph_sees_a_circle_through_a_lazy_import():
    assert _circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_the_package_has_no_import_circle():
    graph = _import_graph(_modules())
    assert "distributed_o2o.runtime.ray_runtime" in graph["distributed_o2o.runtime.finetune"]  # the lazy import is seen
    assert _circles(graph) == []
