"""The package layout the design asks for, checked from the code's own imports."""

from __future__ import annotations

import ast
from pathlib import Path

import networkx as nx

ROOT = Path(__file__).resolve().parent.parent


def imports(package: str) -> nx.DiGraph[str]:
    """module -> module imports inside `package` (TYPE_CHECKING ones included)."""
    graph: nx.DiGraph[str] = nx.DiGraph()
    for path in (ROOT / package.replace(".", "/")).glob("*.py"):
        module = f"{package}.{path.stem}"
        graph.add_node(module)
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.ImportFrom) or not node.module:
                continue
            if node.module == package:
                for alias in node.names:
                    graph.add_edge(module, f"{package}.{alias.name}")
            elif node.module.startswith(package + "."):
                graph.add_edge(module, node.module)
    return graph


def test_the_runtime_has_no_import_circle() -> None:
    assert list(nx.simple_cycles(imports("engine.runtime"))) == []


def test_state_kinds_import_only_the_step_and_the_tasks_they_share() -> None:
    graph = imports("engine.runtime")
    for family in ("tasks", "parallel", "waiting", "flow", "events", "pausing"):
        reached = nx.descendants(graph, f"engine.runtime.{family}")
        assert "engine.runtime.machine" not in reached, family
        assert "engine.runtime.orchestrator" not in reached, family


def test_every_rules_module_says_what_it_decides() -> None:
    for name in (
        "machine",
        "step",
        "kinds",
        "tasks",
        "parallel",
        "waiting",
        "flow",
        "events",
        "pausing",
        "controls",
        "jobdoc",
    ):
        source = (ROOT / "engine" / "runtime" / f"{name}.py").read_text()
        doc = ast.get_docstring(ast.parse(source))
        assert len(doc or "") > 40, f"engine/runtime/{name}.py has no docstring"
