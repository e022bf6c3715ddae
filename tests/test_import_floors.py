"""routing/'s import graph: imports run downward only, on at most ten floors.

A module's floor is 0 when it imports no other module of the package, else one above the highest module it
imports. Every import statement counts, also those inside functions. ``from routing.x import name`` is an
edge to ``routing.x.name`` when that is a module, else to ``routing.x``. Run this file to print the floors:
``python tests/test_import_floors.py``.
"""
from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MAX_FLOORS = 10


def module_name(path: Path, root: Path) -> str:
    """``routing/data/flores.py`` -> ``routing.data.flores``; a package's ``__init__.py`` names the package."""
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(package: str, root: Path = REPO) -> dict[str, set[str]]:
    """Each module of ``package`` -> the modules of ``package`` it imports."""
    files = {module_name(path, root): path for path in (root / package).rglob("*.py")}
    graph = {}
    for name, path in files.items():
        targets = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                targets |= {f"{node.module}.{alias.name}" if f"{node.module}.{alias.name}" in files
                            else node.module for alias in node.names}
        graph[name] = {target for target in targets if target in files and target != name}
    return graph


def floors(graph: dict[str, set[str]]) -> dict[str, int]:
    """Each module's floor; ValueError naming a cycle (an import that runs back up)."""
    floor: dict[str, int] = {}
    path: list[str] = []

    def visit(name: str) -> int:
        if name in path:
            raise ValueError("import cycle: " + " -> ".join(path[path.index(name):] + [name]))
        if name not in floor:
            path.append(name)
            floor[name] = 1 + max((visit(target) for target in graph[name]), default=-1)
            path.pop()
        return floor[name]

    for name in sorted(graph):
        visit(name)
    return floor


def test_routing_imports_run_downward_on_at_most_six_floors():
    levels = floors(import_graph("routing"))
    assert max(levels.values()) < MAX_FLOORS, {name: level for name, level in levels.items() if level >= MAX_FLOORS}


def test_floors_name_a_cycle_and_count_from_zero():
    assert floors({"a": {"b"}, "b": set(), "c": {"a", "b"}}) == {"a": 1, "b": 0, "c": 2}
    try:
        floors({"a": {"b"}, "b": {"a"}})
    except ValueError as err:
        assert "a -> b -> a" in str(err)
    else:
        raise AssertionError("a cycle was not found")


if __name__ == "__main__":
    levels = floors(import_graph("routing"))
    for level in range(max(levels.values()) + 1):
        print(f"floor {level}: {', '.join(sorted(name for name, f in levels.items() if f == level))}")
