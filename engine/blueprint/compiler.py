"""Blueprint data to a compiled `Blueprint`, collecting every problem on the way.

The order is: shape of each state (exactly one kind), the JSON Schema, transition targets,
expressions and embedded schemas, then graph checks (reachability, trap cycles) once the
states are sound, so that a broken state is not reported again as a knock-on. The rules
the schema cannot express live in `engine.blueprint.checks`. Pure: no I/O beyond what the
caller hands in.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import networkx as nx

from engine.blueprint.checks import (
    Finding,
    approval_findings,
    concurrency_findings,
    date_time_problem,
    end_findings,
    graph_findings,
    parallel_findings,
    retry_findings,
    state_shapes,
    timeout_findings,
)
from engine.blueprint.model import (
    ApprovalState,
    Blueprint,
    BranchSpec,
    ChoiceRule,
    ChoiceState,
    Concurrency,
    EndState,
    ListenState,
    ParallelState,
    PerKind,
    RetryPolicy,
    SetState,
    State,
    SubflowSpec,
    SubflowState,
    TaskSpec,
    TaskState,
    Timeouts,
    Transition,
    WaitState,
)
from engine.blueprint.references import chains, reference_warnings, template_expressions
from engine.blueprint.safe_schema import SafeValidator
from engine.blueprint.schema import (
    describe_type,
    did_you_mean,
    json_schema_problems,
    schema_problems,
)
from engine.blueprint.transitions import raw_transitions, state_kind
from engine.blueprint.yamlsource import Path, Source
from engine.durations import parse_duration
from engine.errors import ExpressionError, Problem
from engine.expressions import Const, Expression, Template, compile_expression, compile_template


def content_hash(data: Any) -> str:
    canonical = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def compile_source(source: Source) -> tuple[Blueprint | None, list[Problem]]:
    """Compile parsed YAML. Returns the blueprint (None if any error) and all problems."""
    return _Compiler(source).run()


class _Compiler:
    def __init__(self, source: Source) -> None:
        self.source = source
        self.problems: list[Problem] = []
        self.expressions: dict[Path, Expression] = {}
        self.templates: dict[Path, Template] = {}
        self.validators: dict[Path, Any] = {}

    def error(self, path: Path, message: str, *, key: bool = False) -> None:
        self.problems.append(self.source.problem(path, message, key=key))

    def warn(self, path: Path, message: str, *, key: bool = False) -> None:
        self.problems.append(self.source.problem(path, message, key=key, severity="warning"))

    @property
    def has_errors(self) -> bool:
        return any(p.severity == "error" for p in self.problems)

    def found(self, findings: list[Finding]) -> None:
        for path, message, key in findings:
            self.error(path, message, key=key)

    @property
    def states_sound(self) -> bool:
        """No error so far inside `states` (graph checks would only repeat one)."""
        return not any(
            p.severity == "error"
            and (p.path == "$.states" or p.path.startswith(("$.states.", "$.states[")))
            for p in self.problems
        )

    # -- driver ---------------------------------------------------------------------------

    def run(self) -> tuple[Blueprint | None, list[Problem]]:
        data = self.source.data
        if not isinstance(data, dict):
            message = "the top level must be a mapping with blueprint, start and states"
            if data is None:  # nothing to point at but the start of the file
                self.problems.append(Problem(self.source.file, 1, 1, "$", f"{message}, not null"))
            else:
                self.error((), f"{message}, not {describe_type(data)}")
            return None, self.problems
        checked, skip, findings = state_shapes(data)
        self.found(findings)
        self.problems.extend(schema_problems(self.source, checked, skip))
        raw_states = data.get("states")
        states: dict[str, Any] = raw_states if isinstance(raw_states, dict) else {}
        names = [n for n in states if isinstance(n, str)]
        linked = self._check_targets(data, states, names)
        for name, raw in states.items():
            self._scan_state(name, raw)
        if "input_schema" in data:
            self._embedded_schema(("input_schema",), data["input_schema"])
        self._scan_concurrency(data.get("concurrency"))
        if linked and self.states_sound:
            self.found(graph_findings(states, data["start"]))
        self._choice_warnings(states)
        blueprint = None if self.has_errors else self._build(data, states)
        if blueprint is not None:
            for path, message in reference_warnings(blueprint, self.expressions, self.templates):
                self.warn(path, message)
        return blueprint, sorted(self.problems, key=lambda p: p.sort_key)

    # -- transitions ----------------------------------------------------------------------

    def _check_targets(
        self, data: dict[str, Any], states: dict[str, Any], names: list[str]
    ) -> bool:
        """Report transitions to undeclared states; True when start and every target exist."""
        linked = True
        start = data.get("start")
        if not isinstance(start, str) or start not in states:
            linked = False
            if isinstance(start, str) and names:
                self.error(
                    ("start",), f"start state {start!r} is not declared{did_you_mean(start, names)}"
                )
        for name, raw in states.items():
            for transition, path in raw_transitions(name, raw):
                if transition.target not in states:
                    linked = False
                    self.error(
                        path,
                        f"transition to undeclared state {transition.target!r}"
                        f"{did_you_mean(transition.target, names)}",
                    )
        return linked

    # -- expressions, templates and embedded schemas ----------------------------------------

    def _expression(self, path: Path, text: Any) -> None:
        if not isinstance(text, str):
            return
        try:
            self.expressions[path] = compile_expression(text)
        except ExpressionError as exc:
            self.error(path, str(exc))

    def _template(self, path: Path, value: Any) -> None:
        errors: list[tuple[Path, str]] = []
        self.templates[path] = compile_template(value, path, errors)
        for where, message in errors:
            self.error(where, message)

    def _embedded_schema(self, path: Path, schema: Any) -> None:
        if not isinstance(schema, dict | bool):
            return
        problems = json_schema_problems(self.source, path, schema)
        self.problems.extend(problems)
        if not any(p.severity == "error" for p in problems):  # warnings: slow patterns
            # Linear-time regexes and uniqueItems: these schemas check untrusted data.
            self.validators[path] = SafeValidator(schema)

    def _scan_concurrency(self, spec: Any) -> None:
        """The key of `concurrency:` is a template seeing what a job has when submitted."""
        if not isinstance(spec, dict) or not isinstance(spec.get("key"), str):
            return
        path: Path = ("concurrency", "key")
        self._template(path, spec["key"])
        roots = {
            chain[0]
            for _, expression in template_expressions(self.templates[path], path)
            for chain in chains(expression)
            if chain
        }
        self.found(concurrency_findings(path, roots))

    def _scan_task_fields(self, path: Path, raw: dict[str, Any]) -> None:
        if "params" in raw:
            self._template((*path, "params"), raw["params"])
        if "output_schema" in raw:
            self._embedded_schema((*path, "output_schema"), raw["output_schema"])
        self.found(retry_findings((*path, "retry"), raw.get("retry")))

    def _scan_state(self, name: str, raw: Any) -> None:
        """Compile the expressions and templates of one state (whatever its other errors)."""
        kind = state_kind(raw)
        if kind is None:
            return
        assert isinstance(raw, dict)
        scanners: PerKind[Callable[[Path, dict[str, Any]], None]] = {
            "task": self._scan_task_fields,
            "choice": self._scan_choice,
            "parallel": self._scan_parallel,
            "wait": self._scan_wait,
            "approval": self._scan_approval,
            "listen": self._scan_listen,
            "subflow": self._scan_subflow,
            "set": self._scan_set,
            "end": self._scan_end,
        }
        scanners[kind](("states", name), raw)

    def _scan_choice(self, path: Path, raw: dict[str, Any]) -> None:
        rules = raw.get("choice")
        for i, rule in enumerate(rules if isinstance(rules, list) else []):
            if isinstance(rule, dict):
                self._expression((*path, "choice", i, "when"), rule.get("when"))

    def _scan_parallel(self, path: Path, raw: dict[str, Any]) -> None:
        spec = raw.get("parallel")
        if isinstance(spec, dict):
            self._expression((*path, "parallel", "for_each"), spec.get("for_each"))
            self._scan_branch((*path, "parallel"), spec)
            branches = spec.get("branches")
            for branch, body in branches.items() if isinstance(branches, dict) else []:
                if isinstance(body, dict):
                    self._scan_branch((*path, "parallel", "branches", branch), body)
            self.found(parallel_findings(path, raw))

    def _scan_branch(self, path: Path, raw: dict[str, Any]) -> None:
        """A branch's task fields, or its subflow's input template."""
        self._scan_task_fields(path, raw)
        sub = raw.get("subflow")
        if isinstance(sub, dict) and "input" in sub:
            self._template((*path, "subflow", "input"), sub["input"])

    def _scan_set(self, path: Path, raw: dict[str, Any]) -> None:
        self._template((*path, "set"), raw.get("set"))

    def _scan_end(self, path: Path, raw: dict[str, Any]) -> None:
        for field in ("output", "error"):
            if field in raw:
                self._template((*path, field), raw[field])
        self.found(end_findings(path, raw))

    def _scan_subflow(self, path: Path, raw: dict[str, Any]) -> None:
        sub = raw.get("subflow")
        if isinstance(sub, dict) and "input" in sub:
            self._template((*path, "subflow", "input"), sub["input"])

    def _scan_approval(self, path: Path, raw: dict[str, Any]) -> None:
        approval = raw.get("approval")
        if isinstance(approval, dict) and isinstance(approval.get("message"), str):
            self._template((*path, "approval", "message"), approval["message"])
        self.found(approval_findings(path, raw))

    def _scan_listen(self, path: Path, raw: dict[str, Any]) -> None:
        listen = raw.get("listen")
        if isinstance(listen, dict) and "schema" in listen:
            self._embedded_schema((*path, "listen", "schema"), listen["schema"])
        self.found(timeout_findings(path, raw, "listen"))

    def _scan_wait(self, path: Path, raw: dict[str, Any]) -> None:
        wait = raw.get("wait")
        if not isinstance(wait, dict) or not isinstance(wait.get("until"), str):
            return
        until = wait["until"]
        where = (*path, "wait", "until")
        if "${" in until:
            self._template(where, until)
            return
        problem = date_time_problem(until)
        if problem:
            self.error(where, problem)
        else:
            self.templates[where] = Const(until)

    # -- graph and compiled states ----------------------------------------------------------

    def _build(self, data: dict[str, Any], states: dict[str, Any]) -> Blueprint:
        compiled: dict[str, State] = {}
        graph: nx.DiGraph[str] = nx.DiGraph()
        for name, raw in states.items():
            transitions = tuple(t for t, _ in raw_transitions(name, raw))
            state = self._compile_state(name, raw, transitions)
            compiled[name] = state
            graph.add_node(name, state=state)
        for name, state in compiled.items():
            for transition in state.transitions:
                if graph.has_edge(name, transition.target):
                    graph.edges[name, transition.target]["transitions"] += (transition,)
                else:
                    graph.add_edge(name, transition.target, transitions=(transition,))
        start = data["start"]
        limits = data.get("limits") or {}
        return Blueprint(
            name=data["blueprint"],
            version=data.get("version", 1),
            start=start,
            states=MappingProxyType(compiled),
            graph=nx.freeze(graph),
            content_hash=content_hash(data),
            source=self.source,
            description=data.get("description", ""),
            api_endpoint=data.get("api_endpoint"),
            input_schema=data.get("input_schema"),
            input_validator=self.validators.get(("input_schema",)),
            max_transitions=limits.get("max_transitions"),
            concurrency=self._concurrency(data.get("concurrency")),
            raw=MappingProxyType(copy.deepcopy(data)),
        )

    def _concurrency(self, spec: dict[str, Any] | None) -> Concurrency | None:
        if spec is None:
            return None
        key = self.templates[("concurrency", "key")]
        return Concurrency(key=key, source=spec["key"], limit=spec["limit"])

    def _task_spec(self, path: Path, raw: dict[str, Any]) -> TaskSpec:
        retry = raw.get("retry", {})
        defaults = RetryPolicy()
        policy = RetryPolicy(
            max_attempts=retry.get("max_attempts", defaults.max_attempts),
            backoff=retry.get("backoff", defaults.backoff),
            initial=parse_duration(retry.get("initial", defaults.initial)),
            max=parse_duration(retry.get("max", defaults.max)),
            jitter=float(retry.get("jitter", defaults.jitter)),
            on=frozenset(retry["on"]) if "on" in retry else defaults.on,
        )
        timeouts = raw.get("timeouts", {})
        return TaskSpec(
            task_type=raw["task"],
            params=self.templates.get((*path, "params"), Const({})),
            priority=raw.get("priority", 0),
            retry=policy,
            timeouts=Timeouts(
                **{
                    k: parse_duration(timeouts[k])
                    for k in ("dispatch", "run", "heartbeat")
                    if k in timeouts
                }
            ),
            output_schema=self.validators.get((*path, "output_schema")),
        )

    def _compile_state(
        self, name: str, raw: dict[str, Any], transitions: tuple[Transition, ...]
    ) -> State:
        common = _Common(
            path=("states", name),
            name=name,
            transitions=transitions,
            description=raw.get("description", ""),
        )
        builders: PerKind[Callable[[_Common, dict[str, Any]], State]] = {
            "task": self._task_state,
            "choice": self._choice_state,
            "parallel": self._parallel_state,
            "wait": self._wait_state,
            "approval": self._approval_state,
            "listen": self._listen_state,
            "subflow": self._subflow_state,
            "set": self._set_state,
            "end": self._end_state,
        }
        kind = state_kind(raw)
        assert kind is not None, "only sound states are compiled"
        return builders[kind](common, raw)

    def _task_state(self, c: _Common, raw: dict[str, Any]) -> State:
        return TaskState(spec=self._task_spec(c.path, raw), **c.fields())

    def _choice_state(self, c: _Common, raw: dict[str, Any]) -> State:
        rules = tuple(
            ChoiceRule(self.expressions[(*c.path, "choice", i, "when")], rule["goto"])
            for i, rule in enumerate(raw["choice"])
        )
        return ChoiceState(rules=rules, otherwise=raw.get("otherwise"), **c.fields())

    def _parallel_state(self, c: _Common, raw: dict[str, Any]) -> State:
        spec = raw["parallel"]
        ppath: Path = (*c.path, "parallel")
        branches = tuple(
            (branch, self._branch_spec((*ppath, "branches", branch), body))
            for branch, body in spec.get("branches", {}).items()
        )
        return ParallelState(
            branches=branches,
            for_each=self.expressions.get((*ppath, "for_each")),
            item_spec=self._branch_spec(ppath, spec) if "for_each" in spec else None,
            max_concurrency=spec.get("max_concurrency"),
            on_branch_failure=spec.get("on_branch_failure", "fail_fast"),
            compete=spec.get("compete", False),
            **c.fields(),
        )

    def _branch_spec(self, path: Path, raw: dict[str, Any]) -> BranchSpec:
        """What one branch (or each `for_each` item) runs: a subflow, or a task."""
        sub = raw.get("subflow")
        if sub is None:
            return self._task_spec(path, raw)
        return SubflowSpec(sub["blueprint"], self.templates.get((*path, "subflow", "input")))

    def _wait_state(self, c: _Common, raw: dict[str, Any]) -> State:
        wait = raw["wait"]
        if isinstance(wait, dict):
            return WaitState(until=self.templates[(*c.path, "wait", "until")], **c.fields())
        return WaitState(seconds=parse_duration(wait), **c.fields())

    def _approval_state(self, c: _Common, raw: dict[str, Any]) -> State:
        approval = raw.get("approval", {})
        timeout = approval.get("timeout")
        return ApprovalState(
            message=self.templates.get((*c.path, "approval", "message")),
            timeout=parse_duration(timeout) if timeout is not None else None,
            **c.fields(),
        )

    def _listen_state(self, c: _Common, raw: dict[str, Any]) -> State:
        listen = raw["listen"]
        timeout = listen.get("timeout")
        return ListenState(
            event=listen["event"],
            schema=self.validators.get((*c.path, "listen", "schema")),
            timeout=parse_duration(timeout) if timeout is not None else None,
            **c.fields(),
        )

    def _subflow_state(self, c: _Common, raw: dict[str, Any]) -> State:
        return SubflowState(
            blueprint=raw["subflow"]["blueprint"],
            input=self.templates.get((*c.path, "subflow", "input")),
            **c.fields(),
        )

    def _set_state(self, c: _Common, raw: dict[str, Any]) -> State:
        return SetState(values=self.templates[(*c.path, "set")], **c.fields())

    def _end_state(self, c: _Common, raw: dict[str, Any]) -> State:
        return EndState(
            outcome=raw["end"],
            output=self.templates.get((*c.path, "output")),
            error=self.templates.get((*c.path, "error")),
            **c.fields(),
        )

    def _choice_warnings(self, states: dict[str, Any]) -> None:
        for name, raw in states.items():
            if state_kind(raw) != "choice" or "otherwise" in raw:
                continue
            rules = raw.get("choice")
            count = len(rules) if isinstance(rules, list) else 0
            whens = [
                self.expressions.get(("states", name, "choice", i, "when")) for i in range(count)
            ]
            if any(w is not None and _always_true(w) for w in whens):
                continue
            self.warn(
                ("states", name, "choice"),
                "no `otherwise`: when no condition holds the job fails with NO_CHOICE_MATCHED; "
                "add `otherwise` to choose a state",
                key=True,
            )


@dataclass(frozen=True, slots=True)
class _Common:
    """What every compiled state has, whatever its kind."""

    path: Path
    name: str
    transitions: tuple[Transition, ...]
    description: str

    def fields(self) -> dict[str, Any]:
        return {"name": self.name, "transitions": self.transitions, "description": self.description}


def _always_true(expression: Expression) -> bool:
    """Whether a condition holds whatever the job data (a constant that is true)."""
    if expression.references_data():
        return False
    try:
        return expression.truthy({})
    except ExpressionError:
        return False
