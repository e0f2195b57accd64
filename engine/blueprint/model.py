"""The compiled, immutable form of a blueprint.

Everything a running job needs is decided here once: durations are seconds, expressions
and templates are compiled, transitions are resolved to state names, and the graph is a
frozen networkx DiGraph whose nodes carry the state and whose edges carry the triggers.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Generic, Literal, TypedDict, TypeVar

import networkx as nx
from jsonschema.protocols import Validator

from engine.blueprint.yamlsource import Source
from engine.durations import format_duration
from engine.expressions import Expression, Template

StateKind = Literal[
    "task", "choice", "parallel", "wait", "approval", "listen", "subflow", "set", "end"
]
STATE_KINDS: tuple[StateKind, ...] = (
    "task",
    "choice",
    "parallel",
    "wait",
    "approval",
    "listen",
    "subflow",
    "set",
    "end",
)

T = TypeVar("T")


class PerKind(TypedDict, Generic[T]):
    """One entry for every state kind. Every table keyed by kind (compiler, DOT, runtime
    rules) has this type, so mypy rejects a table that forgets a kind; `tests/test_kinds.py`
    checks that it lists exactly `STATE_KINDS`."""

    task: T
    choice: T
    parallel: T
    wait: T
    approval: T
    listen: T
    subflow: T
    set: T
    end: T


#: Error codes a retry policy never retries, whatever it lists.
NEVER_RETRIED = frozenset({"PERMANENT_ERROR", "INVALID_INPUT_ERROR"})


#: The most jobs one concurrency key may let run at once (`concurrency.limit`).
MAX_CONCURRENCY_LIMIT = 10_000


@dataclass(frozen=True, slots=True)
class Concurrency:
    """`concurrency:` of a blueprint: at most `limit` of its jobs with the same key (the
    rendered `key` template, e.g. `${ initial_data.customer_id }`) run at once; see
    engine/runtime/concurrency.py."""

    key: Template
    source: str  # the key as written, for messages, DOT and explain
    limit: int


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    max_attempts: int = 3
    backoff: Literal["fixed", "linear", "exponential"] = "exponential"
    initial: float = 1.0
    max: float = 300.0
    jitter: float = 0.1
    on: frozenset[str] = frozenset({"TRANSIENT_ERROR", "TIMEOUT"})

    def retries(self, code: str, attempt: int) -> bool:
        """Whether a failure with `code` on attempt number `attempt` (1-based) is retried."""
        return attempt < self.max_attempts and code in self.on and code not in NEVER_RETRIED

    def delay(self, attempt: int, spread: float = 0.0) -> float:
        """Seconds to wait before attempt `attempt + 1`; `spread` in [-1, 1] applies jitter."""
        if self.backoff == "fixed":
            base = self.initial
        elif self.backoff == "linear":
            base = self.initial * attempt
        else:
            base = self.initial * 2.0 ** min(attempt - 1, 64)
        # Jitter first, then the cap: `max` is the upper bound the schema promises.
        return max(0.0, min(base * (1.0 + self.jitter * spread), self.max))


@dataclass(frozen=True, slots=True)
class Timeouts:
    dispatch: float | None = None
    run: float | None = None
    heartbeat: float | None = None


@dataclass(frozen=True, slots=True, eq=False)
class TaskSpec:
    """One unit of work for a worker (a task state, or one branch of a parallel state)."""

    task_type: str
    params: Template
    priority: int = 0
    retry: RetryPolicy = RetryPolicy()
    timeouts: Timeouts = Timeouts()
    output_schema: Validator | None = None


@dataclass(frozen=True, slots=True)
class Transition:
    """An edge of the graph: `trigger` is what takes it, `label` how the graph shows it."""

    trigger: str
    target: str
    label: str


@dataclass(frozen=True, slots=True, eq=False, kw_only=True)
class State:
    kind: ClassVar[StateKind]
    name: str
    transitions: tuple[Transition, ...]
    description: str = ""

    def target(self, trigger: str) -> str | None:
        for transition in self.transitions:
            if transition.trigger == trigger:
                return transition.target
        return None

    @property
    def summary(self) -> str:
        """One short line for graph labels and listings."""
        return self.kind

    def task_spec(self, branch: int | None) -> TaskSpec | None:
        """The work a task of this state (or of one of its branches) does; None for kinds
        that dispatch no task, or a branch that does not exist."""
        return None


@dataclass(frozen=True, slots=True, eq=False, kw_only=True)
class TaskState(State):
    kind: ClassVar[StateKind] = "task"
    spec: TaskSpec

    @property
    def summary(self) -> str:
        return f"task: {self.spec.task_type}"

    def task_spec(self, branch: int | None) -> TaskSpec | None:
        return self.spec


@dataclass(frozen=True, slots=True)
class ChoiceRule:
    when: Expression
    goto: str


@dataclass(frozen=True, slots=True, eq=False, kw_only=True)
class ChoiceState(State):
    kind: ClassVar[StateKind] = "choice"
    rules: tuple[ChoiceRule, ...] = ()
    otherwise: str | None = None


@dataclass(frozen=True, slots=True, eq=False)
class SubflowSpec:
    """A whole blueprint run as a child job: one branch of a parallel state."""

    blueprint: str
    input: Template | None = None  # the child's initial_data; default: the parent's


BranchSpec = TaskSpec | SubflowSpec
"""What one branch of a parallel state runs: a task, or a subflow child job."""


def _branch_summary(spec: BranchSpec) -> str:
    if isinstance(spec, SubflowSpec):
        return f"subflow {spec.blueprint}"
    return spec.task_type


@dataclass(frozen=True, slots=True, eq=False, kw_only=True)
class ParallelState(State):
    kind: ClassVar[StateKind] = "parallel"
    branches: tuple[tuple[str, BranchSpec], ...] = ()
    for_each: Expression | None = None
    item_spec: BranchSpec | None = None
    max_concurrency: int | None = None
    on_branch_failure: Literal["fail_fast", "collect"] = "fail_fast"
    compete: bool = False  # a race: the first branch to succeed wins, the others are cancelled

    @property
    def summary(self) -> str:
        kind = "parallel race" if self.compete else "parallel"
        if self.for_each is not None and self.item_spec is not None:
            return f"{kind}: for_each {self.for_each.source} -> {_branch_summary(self.item_spec)}"
        names = ", ".join(f"{name}: {_branch_summary(spec)}" for name, spec in self.branches)
        return f"{kind}: {names}"

    def branch_spec(self, branch: int | None) -> BranchSpec | None:
        """What branch number `branch` runs; None for a branch that does not exist."""
        if self.item_spec is not None:
            return self.item_spec
        if branch is not None and 0 <= branch < len(self.branches):
            return self.branches[branch][1]
        return None

    def task_spec(self, branch: int | None) -> TaskSpec | None:
        spec = self.branch_spec(branch)
        return spec if isinstance(spec, TaskSpec) else None

    @property
    def task_specs(self) -> list[TaskSpec]:
        """Every task this state's branches may dispatch (subflow branches dispatch none)."""
        specs = [spec for _, spec in self.branches]
        if self.item_spec is not None:
            specs.append(self.item_spec)
        return [spec for spec in specs if isinstance(spec, TaskSpec)]

    @property
    def subflows(self) -> list[tuple[tuple[str, ...], str]]:
        """(path below the state, blueprint name) of every subflow its branches run."""
        found: list[tuple[tuple[str, ...], str]] = [
            (("parallel", "branches", name, "subflow", "blueprint"), spec.blueprint)
            for name, spec in self.branches
            if isinstance(spec, SubflowSpec)
        ]
        if isinstance(self.item_spec, SubflowSpec):
            found.append((("parallel", "subflow", "blueprint"), self.item_spec.blueprint))
        return found


@dataclass(frozen=True, slots=True, eq=False, kw_only=True)
class WaitState(State):
    kind: ClassVar[StateKind] = "wait"
    seconds: float | None = None
    until: Template | None = None

    @property
    def summary(self) -> str:
        if self.seconds is not None:
            return f"wait: {format_duration(self.seconds)}"
        return "wait: until a time"


@dataclass(frozen=True, slots=True, eq=False, kw_only=True)
class ApprovalState(State):
    kind: ClassVar[StateKind] = "approval"
    message: Template | None = None
    timeout: float | None = None

    @property
    def summary(self) -> str:
        return f"approval: {' / '.join(self.decisions)}"

    @property
    def decisions(self) -> tuple[str, ...]:
        return tuple(t.trigger for t in self.transitions if t.trigger != "timeout")


@dataclass(frozen=True, slots=True, eq=False, kw_only=True)
class ListenState(State):
    """Waits for the event named `event`, sent to the job through the API."""

    kind: ClassVar[StateKind] = "listen"
    event: str
    schema: Validator | None = None  # the payload's JSON Schema (linear-time regexes)
    timeout: float | None = None

    @property
    def summary(self) -> str:
        return f"listen: {self.event}"


@dataclass(frozen=True, slots=True, eq=False, kw_only=True)
class SubflowState(State):
    kind: ClassVar[StateKind] = "subflow"
    blueprint: str = ""
    input: Template | None = None

    @property
    def summary(self) -> str:
        return f"subflow: {self.blueprint}"


@dataclass(frozen=True, slots=True, eq=False, kw_only=True)
class SetState(State):
    kind: ClassVar[StateKind] = "set"
    values: Template


@dataclass(frozen=True, slots=True, eq=False, kw_only=True)
class EndState(State):
    kind: ClassVar[StateKind] = "end"
    outcome: Literal["finished", "failed"] = "finished"
    output: Template | None = None
    error: Template | None = None

    @property
    def summary(self) -> str:
        return f"end: {self.outcome}"


@dataclass(frozen=True, eq=False)
class Blueprint:
    """A compiled blueprint. Build it with `engine.blueprint.load_blueprint*`."""

    name: str
    version: int
    start: str
    states: Mapping[str, State]
    graph: nx.DiGraph[str]  # frozen; node attr "state", edge attr "transitions"
    content_hash: str  # sha256 of the canonical JSON of the blueprint; jobs pin it
    source: Source  # the parsed YAML with positions, for messages about this blueprint
    description: str = ""
    api_endpoint: str | None = None
    input_schema: Mapping[str, Any] | bool | None = None
    input_validator: Validator | None = None
    max_transitions: int | None = None
    concurrency: Concurrency | None = None
    raw: Mapping[str, Any] = field(default_factory=dict)

    @property
    def source_file(self) -> str:
        return self.source.file
