"""Blueprint test files: `*.test.yaml`, checked against schemas/blueprint-test.schema.json.

A file names one blueprint and lists cases; each case gives the job's `initial_data`, what
the worker answers for each state or task type (per attempt), what people and systems
send (approval decisions, events), how much fake time may pass, and what to expect. Every
problem in a file is reported at `file:line:col`, as for blueprints.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator

from engine.blueprint.loader import TEST_FILE_SUFFIXES, expand_paths
from engine.blueprint.yamlsource import Source, parse_yaml
from engine.durations import parse_duration
from engine.errors import BlueprintError, ExpressionError, InterlockError, Problem
from engine.expressions import Expression, Template, compile_expression, compile_template

DEFAULT_ADVANCE_MS = 366 * 86_400_000


class TestFileInvalid(InterlockError):
    """A test file could not be read. `problems` lists every error found."""

    __test__ = False  # not a pytest test class

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = sorted(problems, key=lambda p: p.sort_key)
        super().__init__("\n".join(str(p) for p in self.problems))


@dataclass(frozen=True)
class Outcome:
    """One scripted answer of the worker for a task attempt."""

    status: str = "success"
    when: Expression | None = None  # holds for the tasks it answers (else: by attempt)
    data: Template | None = None  # rendered against the task (params, attempt, state, branch)
    error: Mapping[str, Any] | None = None
    delay_ms: int = 0
    timeout: bool = False  # hold the task, heartbeat, never answer


@dataclass(frozen=True)
class Decision:
    """An approval decision sent `after_ms` after the approval state asked."""

    state: str
    decision: str
    after_ms: int = 0


@dataclass(frozen=True)
class Event:
    """An event (its name and payload) sent `after_ms` after a listen state starts listening
    for it."""

    event: str
    data: Any = field(default_factory=dict)
    after_ms: int = 0


Message = Decision | Event


@dataclass(frozen=True)
class Case:
    name: str
    line: int  # where the case starts in its file
    initial_data: Any = field(default_factory=dict)
    tasks: Mapping[str, tuple[Outcome, ...]] = field(default_factory=dict)
    send: tuple[Message, ...] = ()
    advance_ms: int = DEFAULT_ADVANCE_MS
    expect: Mapping[str, Any] = field(default_factory=dict)
    asserts: tuple[Expression, ...] = ()

    def outcome(self, state: str, task_type: str, context: Mapping[str, Any]) -> Outcome | None:
        """The scripted answer to a task (`context`: its params, attempt, state, branch):
        the first entry whose `when` holds, else the entry for its attempt among those
        without `when` (the last one repeats); None if nothing is scripted."""
        script = self.tasks.get(state) or self.tasks.get(task_type) or ()
        for outcome in script:
            if outcome.when is not None and outcome.when.truthy(context):
                return outcome
        plain = [outcome for outcome in script if outcome.when is None]
        if not plain:
            return None
        return plain[min(int(context["attempt"]), len(plain)) - 1]


@dataclass(frozen=True)
class TestFile:
    __test__ = False  # not a pytest test class

    path: Path
    blueprint: str
    blueprints: Path  # the folder (or file) the blueprint and its subflows load from
    cases: tuple[Case, ...]


@cache
def test_file_schema() -> dict[str, Any]:
    """The test file JSON Schema shipped in the `schemas` package."""
    text = resources.files("schemas").joinpath("blueprint-test.schema.json").read_text("utf-8")
    schema: dict[str, Any] = json.loads(text)
    return schema


@cache
def _validator() -> Draft202012Validator:
    return Draft202012Validator(test_file_schema())


def is_test_file(path: Path) -> bool:
    return path.name.endswith(TEST_FILE_SUFFIXES)


def find_test_files(paths: Iterable[str | Path]) -> tuple[list[Path], list[Problem]]:
    """Files named directly, plus every *.test.yaml / *.test.yml below named folders."""
    return expand_paths(paths, tests=True)


def load_test_file(path: Path) -> TestFile:
    """Read and check one test file; TestFileInvalid lists every problem."""
    try:
        source = parse_yaml(path.read_text(encoding="utf-8"), str(path))
    except OSError as exc:
        raise TestFileInvalid([Problem(str(path), 1, 1, "$", f"cannot read: {exc}")]) from None
    except UnicodeDecodeError:
        raise TestFileInvalid([Problem(str(path), 1, 1, "$", "not UTF-8 text")]) from None
    except BlueprintError as exc:
        raise TestFileInvalid(exc.problems) from None
    data = source.data
    problems = [
        source.problem(tuple(error.absolute_path), error.message)
        for error in _validator().iter_errors(data)
    ]
    if problems:
        raise TestFileInvalid(problems)
    cases = tuple(_case(source, i, raw, problems) for i, raw in enumerate(data["cases"]))
    names = [case.name for case in cases]
    for i, name in enumerate(names):
        if name in names[:i]:
            problems.append(source.problem(("cases", i, "name"), f"duplicate case name {name!r}"))
    if problems:
        raise TestFileInvalid(problems)
    return TestFile(path, data["blueprint"], _blueprints_path(path, data.get("blueprints")), cases)


def _blueprints_path(path: Path, given: str | None) -> Path:
    if given is not None:
        return path.parent / given
    here = path.parent
    holds = any(
        p.suffix in (".yaml", ".yml") and not is_test_file(p) for p in here.iterdir() if p.is_file()
    )
    return here if holds else here.parent


def _case(source: Source, index: int, raw: dict[str, Any], problems: list[Problem]) -> Case:
    base = ("cases", index)

    def duration(path: tuple[str | int, ...], value: Any) -> int:
        try:
            return round(parse_duration(value) * 1000)
        except ValueError as exc:
            problems.append(source.problem(path, str(exc)))
            return 0

    tasks: dict[str, tuple[Outcome, ...]] = {}
    for key, script in (raw.get("tasks") or {}).items():
        entries = script if isinstance(script, list) else [script]
        outcomes = []
        for i, entry in enumerate(entries):
            where = (*base, "tasks", key, i) if isinstance(script, list) else (*base, "tasks", key)
            outcomes.append(_outcome(source, where, entry, duration, problems))
        tasks[key] = tuple(outcomes)
    send = tuple(
        _message(message, duration((*base, "send", i, "after"), message.get("after", 0)))
        for i, message in enumerate(raw.get("send") or [])
    )
    expect = raw.get("expect") or {}
    asserts = []
    for i, text in enumerate(expect.get("assert") or []):
        try:
            asserts.append(compile_expression(text))
        except ExpressionError as exc:
            problems.append(source.problem((*base, "expect", "assert", i), str(exc)))
    advance = raw.get("advance")
    return Case(
        name=raw["name"],
        line=source.position(base)[0],
        initial_data=raw.get("initial_data", {}),
        tasks=tasks,
        send=send,
        advance_ms=DEFAULT_ADVANCE_MS if advance is None else duration((*base, "advance"), advance),
        expect=expect,
        asserts=tuple(asserts),
    )


def _message(raw: dict[str, Any], after_ms: int) -> Message:
    if "event" in raw:
        return Event(raw["event"], raw.get("data", {}), after_ms)
    return Decision(raw["approval"], raw["decision"], after_ms)


def _outcome(
    source: Source,
    where: tuple[str | int, ...],
    raw: dict[str, Any],
    duration: Any,
    problems: list[Problem],
) -> Outcome:
    errors: list[tuple[tuple[str | int, ...], str]] = []
    data = compile_template(raw["data"], (*where, "data"), errors) if "data" in raw else None
    problems.extend(source.problem(path, message) for path, message in errors)
    error = raw.get("error")
    when = None
    if "when" in raw:
        try:
            when = compile_expression(raw["when"])
        except ExpressionError as exc:
            problems.append(source.problem((*where, "when"), str(exc)))
    return Outcome(
        when=when,
        status=raw.get("status") or ("failure" if error else "success"),
        data=data,
        error=error,
        delay_ms=duration((*where, "delay"), raw.get("delay", 0)),
        timeout=bool(raw.get("timeout")),
    )
