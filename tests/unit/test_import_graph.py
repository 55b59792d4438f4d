"""No import cycles inside ``loraserve``: every ``import`` / ``from ... import`` of every module
counts, relative ones, those inside functions and those under ``TYPE_CHECKING`` too, since a
cycle that only a lazy import hides is still two modules that cannot be understood apart."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import loraserve

ROOT = Path(loraserve.__file__).parent
Graph = dict[str, set[str]]


def module_name(path: Path, root: Path = ROOT) -> str:
    """``src/loraserve/api/app.py`` → ``loraserve.api.app``; a package is its ``__init__``."""
    parts = path.relative_to(root.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _known(name: str, modules: set[str]) -> str | None:
    """The longest prefix of ``name`` that is one of ``modules`` (``a.b.attr`` → ``a.b``)."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def _targets(node: ast.Import | ast.ImportFrom, package: str, modules: set[str]) -> Iterator[str | None]:
    """The modules of ``modules`` one import statement loads (by name, not their parents)."""
    if isinstance(node, ast.Import):
        for alias in node.names:
            yield _known(alias.name, modules)
        return
    base = node.module or ""
    if node.level:  # relative: ``from .. import x`` is resolved against the importer's package
        anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
        base = ".".join([*anchor, base] if base else anchor)
    for alias in node.names:  # ``from pkg import sub`` loads the submodule; else ``pkg`` itself
        submodule = f"{base}.{alias.name}"
        yield submodule if submodule in modules else _known(base, modules)


def import_graph(root: Path = ROOT) -> Graph:
    """Each module of the package → the modules of the package it imports."""
    files = {module_name(path, root): path for path in sorted(root.rglob("*.py"))}
    modules = set(files)
    graph: Graph = {}
    for name, path in files.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        found = (
            target
            for node in ast.walk(tree)
            if isinstance(node, ast.Import | ast.ImportFrom)
            for target in _targets(node, package, modules)
        )
        graph[name] = {target for target in found if target and target != name}
    return graph


def cycles(graph: Graph) -> list[list[str]]:
    """One cycle path (``[a, b, ..., a]``) through each strongly connected group of modules."""
    order: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    groups: list[set[str]] = []

    def visit(node: str) -> None:  # Tarjan's algorithm
        order[node] = low[node] = len(order)
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in order:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], order[nxt])
        if low[node] == order[node]:  # ``node`` heads a group: it and all above it on the stack
            group = set(stack[stack.index(node) :])
            del stack[stack.index(node) :]
            if len(group) > 1:
                groups.append(group)

    for node in sorted(graph):
        if node not in order:
            visit(node)
    return [_path_in(group, graph) for group in groups]


def _path_in(group: set[str], graph: Graph) -> list[str]:
    """A shortest cycle through the group's first module, by breadth-first search."""
    start = min(group)
    came_from: dict[str, str] = {}
    frontier = [start]
    while frontier:
        reached = []
        for node in frontier:
            if start in graph[node]:
                path = [node]
                while path[-1] != start:
                    path.append(came_from[path[-1]])
                return [*reversed(path), start]
            for nxt in sorted(graph[node] & group):
                if nxt not in came_from and nxt != start:
                    came_from[nxt] = node
                    reached.append(nxt)
        frontier = reached
    raise AssertionError(f"no cycle through {start} in {sorted(group)}")


def describe(found: list[list[str]]) -> str:
    return "\n".join(" -> ".join(path) for path in found)


def test_the_graph_sees_every_import_form(tmp_path: Path) -> None:
    pkg = tmp_path / "loraserve"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("import loraserve.b\n")
    (pkg / "b.py").write_text("def f():\n    from .sub import c\n")
    (pkg / "sub" / "__init__.py").write_text("from . import c\n")
    (pkg / "sub" / "c.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from ..a import thing\n"
    )
    graph = import_graph(pkg)
    assert graph == {
        "loraserve": set(),
        "loraserve.a": {"loraserve.b"},
        "loraserve.b": {"loraserve.sub.c"},
        "loraserve.sub": {"loraserve.sub.c"},
        "loraserve.sub.c": {"loraserve.a"},
    }
    assert describe(cycles(graph)) == "loraserve.a -> loraserve.b -> loraserve.sub.c -> loraserve.a"


def test_loraserve_has_no_import_cycle() -> None:
    found = cycles(import_graph())
    assert not found, f"import cycles (each module of a cycle imports the next):\n{describe(found)}"
