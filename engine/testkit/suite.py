"""Test files run together: their blueprints loaded once, results per case, and coverage.

Used by `interlock test` and by the pytest plugin (`engine/testkit/pytest_plugin.py`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from engine.blueprint.dot import to_dot
from engine.blueprint.loader import BlueprintSet, validate_paths
from engine.blueprint.model import Blueprint
from engine.blueprint.schema import did_you_mean
from engine.errors import InterlockError
from engine.testkit.expect import check
from engine.testkit.runner import CaseError, Edge, Run, run_case
from engine.testkit.spec import Case, TestFile


class BlueprintsUnusable(InterlockError):
    """The blueprint a test file names cannot be loaded."""


@dataclass
class CaseResult:
    file: TestFile
    case: Case
    run: Run | None  # None when the case could not run
    failures: list[str]

    @property
    def passed(self) -> bool:
        return not self.failures

    @property
    def title(self) -> str:
        return f"{self.file.path}::{self.case.name}"


class BlueprintCache:
    """Blueprint sets by folder, loaded once however many test files use them."""

    def __init__(self) -> None:
        self._sets: dict[Path, BlueprintSet | str] = {}

    def load(self, file: TestFile) -> BlueprintSet:
        key = file.blueprints.resolve()
        if key not in self._sets:
            loaded, problems = validate_paths([file.blueprints])
            errors = [str(p) for p in problems if p.severity == "error"]
            self._sets[key] = "\n".join(errors) if errors else loaded
        found = self._sets[key]
        if isinstance(found, str):
            raise BlueprintsUnusable(f"the blueprints in {file.blueprints} have errors:\n{found}")
        if file.blueprint not in found.blueprints:
            hint = did_you_mean(file.blueprint, found.blueprints)
            raise BlueprintsUnusable(
                f"{file.path}: no blueprint {file.blueprint!r} in {file.blueprints}{hint}"
            )
        return found

    def loaded(self) -> list[BlueprintSet]:
        return [found for found in self._sets.values() if isinstance(found, BlueprintSet)]


async def run_one(cache: BlueprintCache, file: TestFile, case: Case) -> CaseResult:
    """Run one case and judge it; a case that cannot run fails with the reason."""
    try:
        blueprints = cache.load(file)
        run = await run_case(blueprints, file.blueprint, case)
    except (BlueprintsUnusable, CaseError) as exc:
        return CaseResult(file, case, None, [str(exc)])
    return CaseResult(file, case, run, check(case, run))


@dataclass
class Coverage:
    """The states entered and the edges taken, per blueprint, over every case run."""

    blueprints: dict[str, Blueprint] = field(default_factory=dict)
    visited: dict[str, set[str]] = field(default_factory=dict)
    taken: dict[str, set[Edge]] = field(default_factory=dict)

    def include(self, blueprints: Iterable[Blueprint]) -> None:
        """Count these blueprints in, even if no case reaches them."""
        for blueprint in blueprints:
            self.blueprints.setdefault(blueprint.name, blueprint)
            self.visited.setdefault(blueprint.name, set())
            self.taken.setdefault(blueprint.name, set())

    def add(self, run: Run) -> None:
        for name, states in run.visited.items():
            self.visited.setdefault(name, set()).update(states)
        for name, edges in run.taken.items():
            self.taken.setdefault(name, set()).update(edges)

    @staticmethod
    def edges(blueprint: Blueprint) -> list[Edge]:
        return [
            (name, t.trigger, t.target)
            for name, state in blueprint.states.items()
            for t in state.transitions
        ]

    def figures(self) -> tuple[int, int, int, int]:
        """(edges taken, edges, states entered, states) over every blueprint."""
        taken = edges = entered = states = 0
        for name, blueprint in self.blueprints.items():
            all_edges = self.edges(blueprint)
            edges += len(all_edges)
            taken += len(set(all_edges) & self.taken.get(name, set()))
            states += len(blueprint.states)
            entered += len(set(blueprint.states) & self.visited.get(name, set()))
        return taken, edges, entered, states

    def report(self) -> list[str]:
        lines: list[str] = []
        for name in sorted(self.blueprints):
            blueprint = self.blueprints[name]
            all_edges = self.edges(blueprint)
            taken = self.taken.get(name, set())
            visited = self.visited.get(name, set())
            covered = sum(edge in taken for edge in all_edges)
            entered = sum(state in visited for state in blueprint.states)
            lines.append(
                f"{name}: {covered}/{len(all_edges)} edges, "
                f"{entered}/{len(blueprint.states)} states"
            )
            lines += [f"  state never entered: {s}" for s in blueprint.states if s not in visited]
            labels = {
                (name, t.trigger, t.target): t.label
                for name, state in blueprint.states.items()
                for t in state.transitions
            }
            for edge in all_edges:
                if edge not in taken:
                    src, trigger, dst = edge
                    label = labels[edge]
                    shown = "" if label.startswith(trigger) or label == "then" else f" ({label})"
                    lines.append(f"  edge never taken: {src} --{trigger}--> {dst}{shown}")
        taken_n, edges_n, entered_n, states_n = self.figures()
        percent = 100.0 * taken_n / edges_n if edges_n else 100.0
        lines.append(
            f"coverage: {taken_n}/{edges_n} edges ({percent:.1f}%), {entered_n}/{states_n} states"
        )
        return lines

    def write_graphs(self, folder: Path) -> list[Path]:
        """One DOT file per blueprint, taken edges and entered states highlighted."""
        folder.mkdir(parents=True, exist_ok=True)
        written = []
        for name in sorted(self.blueprints):
            path = folder / f"{name}.dot"
            dot = to_dot(
                self.blueprints[name],
                visited=self.visited.get(name, set()),
                taken=self.taken.get(name, set()),
            )
            path.write_text(dot, encoding="utf-8")
            written.append(path)
        return written
