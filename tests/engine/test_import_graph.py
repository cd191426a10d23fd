"""The package's import graph: no cycles, and no module reaching into another package's privates.

Read from the source with ``ast`` (nothing is imported), so the test sees every import the code
can make: a function-level import (deferred to keep an optional dependency out) is an edge like
any other; only imports under ``if TYPE_CHECKING:`` are left out, since they never run. An import
of ``a.b.c`` is an edge to ``a.b.c`` alone: its parent packages run their ``__init__`` once, and
a package importing its own modules from there is no cycle.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import flowcollect

ROOT = Path(flowcollect.__file__).parent
PACKAGE = "flowcollect"


@dataclass(frozen=True, slots=True)
class Edge:
    source: str
    target: str
    line: int


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(node: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    """Every import under ``node``, except those in the body of ``if TYPE_CHECKING:``."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.If) and _is_type_checking(child.test):
            for orelse in child.orelse:
                yield from _imports_of(orelse)
            continue
        yield from _imports_of(child)


def _imports_of(node: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    if isinstance(node, ast.Import | ast.ImportFrom):
        yield node
    else:
        yield from _imports(node)


def _resolve(source: str, is_package: bool, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = source.split(".") if is_package else source.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join([*base, node.module] if node.module else base)


def edges(known: dict[str, Path]) -> list[Edge]:
    """Each import of a flowcollect module by a flowcollect module, as the module it loads:
    ``from a.b import c`` loads ``a.b.c`` when that is a module, else ``a.b``."""
    out: list[Edge] = []
    for source, path in known.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        is_package = path.name == "__init__.py"
        for node in _imports(tree):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                module = _resolve(source, is_package, node)
                targets = [
                    f"{module}.{alias.name}" if f"{module}.{alias.name}" in known else module
                    for alias in node.names
                ]
            for target in targets:
                if target.split(".")[0] == PACKAGE and target in known and target != source:
                    out.append(Edge(source, target, node.lineno))
    return out


def _owner(target: str) -> str | None:
    """The package a private module belongs to: the parent of its first ``_`` component
    (``flowcollect.runtime._clock`` -> ``flowcollect.runtime``); None for a public module."""
    parts = target.split(".")
    for n, part in enumerate(parts):
        if part.startswith("_") and not part.startswith("__"):
            return ".".join(parts[:n])
    return None


def private_imports(graph: list[Edge]) -> list[str]:
    found = []
    for edge in graph:
        owner = _owner(edge.target)
        if owner is not None and edge.source != owner and not edge.source.startswith(owner + "."):
            found.append(f"{edge.source} (line {edge.line}) imports {edge.target}, private to {owner}")
    return found


def cycles(graph: list[Edge]) -> list[list[str]]:
    """One cycle per strongly connected component with more than one module (Tarjan)."""
    succ: dict[str, list[str]] = {}
    for edge in graph:
        succ.setdefault(edge.source, []).append(edge.target)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in succ.get(v, []):
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
                components.append(component)

    for v in sorted(succ):
        if v not in index:
            visit(v)
    return [_one_cycle(sorted(c), succ) for c in components]


def _one_cycle(component: list[str], succ: dict[str, list[str]]) -> list[str]:
    """A shortest path from the component's first module back to itself, for the message."""
    members = set(component)
    start = component[0]
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        following = []
        for v in frontier:
            for w in succ.get(v, []):
                if w == start:
                    return [*paths[v], start]
                if w in members and w not in paths:
                    paths[w] = [*paths[v], w]
                    following.append(w)
        frontier = following
    return component


def _graph_of(sources: dict[str, str], tmp_path: Path) -> list[Edge]:
    known = {}
    for name, text in sources.items():
        path = tmp_path / f"{name.replace('.', '_')}.py"
        path.write_text(text, encoding="utf-8")
        known[name] = path
    return edges(known)


def test_flowcollect_has_no_import_cycle() -> None:
    graph = edges(modules())
    assert len(graph) > 100  # the graph really was read
    found = cycles(graph)
    assert not found, "import cycles: " + "; ".join(" -> ".join(c) for c in found)


def test_no_module_imports_another_packages_private_module() -> None:
    found = private_imports(edges(modules()))
    assert not found, "\n".join(found)


# The checks themselves, on small made-up packages: each must find what it is there to find.


def test_the_cycle_check_finds_a_lazy_import_cycle_and_ignores_type_checking(tmp_path: Path) -> None:
    lazy = {
        "flowcollect.a": "from flowcollect import b\n",
        "flowcollect.b": "def f():\n    from flowcollect.a import x\n",
    }
    assert cycles(_graph_of(lazy, tmp_path)) == [["flowcollect.a", "flowcollect.b", "flowcollect.a"]]
    typing_only = {
        "flowcollect.a": "from flowcollect import b\n",
        "flowcollect.b": (
            "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from flowcollect.a import x\n"
        ),
    }
    assert cycles(_graph_of(typing_only, tmp_path)) == []


def test_the_private_check_allows_a_package_its_own_privates(tmp_path: Path) -> None:
    sources = {
        "flowcollect.runtime": "from flowcollect.runtime._clock import Clock\n",
        "flowcollect.runtime._clock": "",
        "flowcollect.runtime._lane": "from ._clock import Clock\n",
        "flowcollect.collector": (
            "from flowcollect.runtime._clock import Clock\nfrom flowcollect._logs import x\n"
        ),
        "flowcollect._logs": "",
    }
    assert private_imports(_graph_of(sources, tmp_path)) == [
        "flowcollect.collector (line 1) imports flowcollect.runtime._clock, private to flowcollect.runtime"
    ]
