"""The package layout holds: who may import whom, and how the server reaches the engine."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def modules(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def imported(path: Path) -> set[str]:
    """Top-level names of every package `path` imports."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize(
    ("package", "forbidden"),
    [
        ("engine", {"server", "interlock_cli", "worker_sdk", "interlock_client"}),
        ("server", {"interlock_cli", "worker_sdk", "interlock_client"}),
        ("worker_sdk", {"engine", "server", "interlock_cli", "interlock_client"}),
        ("interlock_client", {"engine", "server", "worker_sdk", "interlock_cli"}),
    ],
)
def test_lower_packages_never_import_higher_ones(package: str, forbidden: set[str]) -> None:
    found = {
        f"{path.relative_to(ROOT)} imports {name}"
        for path in modules(package)
        for name in imported(path) & forbidden
    }
    assert modules(package)
    assert found == set()


def test_the_server_talks_to_the_engine_through_the_orchestrator() -> None:
    """No `orch.store` / `orch.registry`: what the server needs is an Orchestrator method."""
    found = [
        f"{path.relative_to(ROOT)}:{node.lineno}: .{node.attr}"
        for path in modules("server")
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
        if isinstance(node, ast.Attribute) and node.attr in ("store", "registry")
    ]
    assert found == []


def test_one_clock_for_milliseconds() -> None:
    """Engine and server read the millisecond clock through engine.clock.now_ms only."""
    copies = [
        f"{path.relative_to(ROOT)}:{number}"
        for package in ("engine", "server", "interlock_cli")
        for path in modules(package)
        if path != ROOT / "engine" / "clock.py"
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if "time.time() * 1000" in line or "def now_ms" in line
    ]
    assert copies == []
