"""Loading blueprints from files and folders, with the checks that span several files."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path as FsPath

import networkx as nx

from engine.blueprint.compiler import compile_source
from engine.blueprint.model import Blueprint, ParallelState, State, SubflowState
from engine.blueprint.schema import did_you_mean
from engine.blueprint.yamlsource import parse_yaml
from engine.errors import BlueprintError, BlueprintInvalid, Problem

BLUEPRINT_SUFFIXES = (".yaml", ".yml")
# Blueprint test files (`interlock test`) sit among blueprints; folders load them as tests.
TEST_FILE_SUFFIXES = (".test.yaml", ".test.yml")
MAX_FILE_BYTES = 1 << 20


def check_text(text: str, file: str = "<string>") -> tuple[Blueprint | None, list[Problem]]:
    """Compile one blueprint's YAML text. Returns the blueprint (None on error) and problems."""
    try:
        source = parse_yaml(text, file)
    except BlueprintError as exc:
        return None, exc.problems
    return compile_source(source)


def load_blueprint_text(text: str, file: str = "<string>") -> Blueprint:
    """Compile one blueprint or raise a BlueprintError subclass listing every error.

    BlueprintSyntaxError when the YAML cannot be read, BlueprintInvalid otherwise.
    """
    blueprint, problems = compile_source(parse_yaml(text, file))
    if blueprint is None:
        raise BlueprintInvalid([p for p in problems if p.severity == "error"])
    return blueprint


def _read(path: FsPath, display: str) -> tuple[str | None, list[Problem]]:
    try:
        if path.stat().st_size > MAX_FILE_BYTES:
            return None, [
                Problem(display, 1, 1, "$", f"file is larger than {MAX_FILE_BYTES} bytes")
            ]
        return path.read_text(encoding="utf-8"), []
    except UnicodeDecodeError as exc:
        return None, [Problem(display, 1, 1, "$", f"file is not UTF-8 text: {exc.reason}")]
    except OSError as exc:
        return None, [Problem(display, 1, 1, "$", f"cannot read file: {exc.strerror or exc}")]


def load_blueprint(path: str | FsPath) -> Blueprint:
    """Load and compile one blueprint file."""
    display = str(path)
    text, problems = _read(FsPath(path), display)
    if text is None:
        raise BlueprintInvalid(problems)
    return load_blueprint_text(text, display)


def expand_paths(
    paths: Iterable[str | FsPath], *, tests: bool = False
) -> tuple[list[FsPath], list[Problem]]:
    """Files named directly, plus every *.yaml / *.yml below named folders (sorted), except
    blueprint test files (*.test.yaml, see `interlock test`), which may sit among them; with
    `tests`, those test files only."""
    files: list[FsPath] = []
    problems: list[Problem] = []
    for raw in paths:
        path = FsPath(raw)
        if path.is_dir():
            found = sorted(
                p
                for p in path.rglob("*")
                if p.suffix in BLUEPRINT_SUFFIXES
                and p.name.endswith(TEST_FILE_SUFFIXES) == tests
                and p.is_file()
            )
            if not found:
                held = ".test.yaml" if tests else ".yaml or .yml"
                problems.append(Problem(str(path), 1, 1, "$", f"folder holds no {held} file"))
            files.extend(found)
        elif path.is_file():
            files.append(path)
        else:
            problems.append(Problem(str(path), 1, 1, "$", "no such file or folder"))
    unique = list(dict.fromkeys(files))
    return unique, problems


@dataclass(frozen=True)
class BlueprintSet:
    """Blueprints loaded together: names and API endpoints are unique among them."""

    blueprints: Mapping[str, Blueprint]
    warnings: tuple[Problem, ...] = field(default=())

    def __iter__(self) -> Iterator[Blueprint]:
        return iter(self.blueprints.values())

    def __len__(self) -> int:
        return len(self.blueprints)

    def by_endpoint(self) -> dict[str, Blueprint]:
        return {bp.api_endpoint: bp for bp in self if bp.api_endpoint}


def validate_paths(paths: Iterable[str | FsPath]) -> tuple[BlueprintSet, list[Problem]]:
    """Load every blueprint below `paths`; return the good ones and all problems found."""
    files, problems = expand_paths(paths)
    loaded: dict[str, Blueprint] = {}
    endpoints: dict[str, Blueprint] = {}
    for file in files:
        display = str(file)
        text, read_problems = _read(file, display)
        problems.extend(read_problems)
        if text is None:
            continue
        blueprint, found = check_text(text, display)
        problems.extend(found)
        if blueprint is None:
            continue
        if blueprint.name in loaded:
            first = loaded[blueprint.name].source_file
            problems.append(
                blueprint.source.problem(
                    ("blueprint",), f"duplicate blueprint name {blueprint.name!r} (also in {first})"
                )
            )
            continue
        if blueprint.api_endpoint and blueprint.api_endpoint in endpoints:
            first = endpoints[blueprint.api_endpoint].source_file
            problems.append(
                blueprint.source.problem(
                    ("api_endpoint",),
                    f"duplicate api_endpoint {blueprint.api_endpoint!r} (also in {first})",
                )
            )
            continue
        loaded[blueprint.name] = blueprint
        if blueprint.api_endpoint:
            endpoints[blueprint.api_endpoint] = blueprint
    problems.extend(_subflow_problems(loaded))
    warnings = tuple(p for p in problems if p.severity == "warning")
    return BlueprintSet(loaded, warnings), sorted(problems, key=lambda p: p.sort_key)


def load_blueprints(paths: Iterable[str | FsPath]) -> BlueprintSet:
    """Like validate_paths, but raise BlueprintInvalid listing every error if there is one."""
    blueprints, problems = validate_paths(paths)
    if any(p.severity == "error" for p in problems):
        raise BlueprintInvalid(problems)
    return blueprints


def _subflow_problems(blueprints: Mapping[str, Blueprint]) -> list[Problem]:
    """Subflows must name a loaded blueprint, and must not call each other in a cycle.

    `blueprints` is in load order (sorted file order); each cycle is reported once, from
    the member loaded first, so the report does not depend on set or hash order."""
    problems: list[Problem] = []
    calls: nx.DiGraph[str] = nx.DiGraph()
    calls.add_nodes_from(blueprints)
    for blueprint in blueprints.values():
        for state in blueprint.states.values():
            for where, name in _subflow_calls(state):
                if name not in blueprints:
                    hint = did_you_mean(name, blueprints)
                    message = f"subflow blueprint {name!r} is not loaded{hint}"
                    problems.append(blueprint.source.problem(where, message))
                elif not calls.has_edge(blueprint.name, name):
                    calls.add_edge(blueprint.name, name, where=where)
    order = {name: i for i, name in enumerate(blueprints)}
    cycles: list[list[str]] = []
    for cycle in nx.simple_cycles(calls):
        earliest = min(range(len(cycle)), key=lambda i: order[cycle[i]])
        cycles.append(cycle[earliest:] + cycle[:earliest])
    for cycle in sorted(cycles, key=lambda c: [order[name] for name in c]):
        first = cycle[0]
        after = cycle[1] if len(cycle) > 1 else first
        where = calls.edges[first, after]["where"]
        loop = " -> ".join([*cycle, first])
        if len(cycle) == 1:
            message = f"subflow calls its own blueprint {first!r}, a cycle: {loop}"
        else:
            message = f"subflows call each other in a cycle: {loop}"
        problems.append(blueprints[first].source.problem(where, message))
    return problems


def _subflow_calls(state: State) -> list[tuple[tuple[str, ...], str]]:
    """(path of the `blueprint` field, child blueprint) of every subflow `state` runs: a
    subflow state's child, or a parallel state's subflow branches."""
    here = ("states", state.name)
    if isinstance(state, SubflowState):
        return [((*here, "subflow", "blueprint"), state.blueprint)]
    if isinstance(state, ParallelState):
        return [((*here, *path), name) for path, name in state.subflows]
    return []
