"""Runs one test case: the real orchestrator, on the embedded store, on a fake clock.

The job is created, committed, leased, timed out and retried by the production code:
`Orchestrator` (its rules and commits), the store's Lua scripts on `memory://`, the
dispatcher's pump, and the timer loop's `fire_timers`. What is simulated is the outside
world, one event at a time: a worker that takes every queued task and answers it as the
case scripts (after a delay, or never), people and systems who send approval decisions and
events, and time, which jumps straight to the next moment something is due. No loop of the
orchestrator runs on its own (no `start()`), so a run is deterministic: the same case gives
the same history.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from engine.blueprint.loader import BlueprintSet
from engine.blueprint.model import ListenState, ParallelState, State, TaskSpec
from engine.blueprint.schema import did_you_mean
from engine.clock import FakeClock
from engine.errors import ExpressionError, InterlockError
from engine.runtime import background
from engine.runtime.background import leases_of
from engine.runtime.controls import InvalidPayload
from engine.runtime.jobdoc import TERMINAL, Ignored, JobStatus, RuntimeSettings
from engine.runtime.orchestrator import Orchestrator, OrchestratorSettings
from engine.runtime.registry import Registry
from engine.store.client import JobRecord, Store
from engine.testkit.spec import Case, Decision, Event, Message

START_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z: every case starts at the same moment
JOB_ID = "job"
WORKER = "interlock-test"
CLIENT = "interlock-test"
POLL_S = 10.0  # how long the worker's poll may take for a task known to be queued
MAX_STEPS = 10_000  # events one case may take: more means a loop


class CaseError(InterlockError):
    """The case cannot run as written (no outcome for a task, a loop, ...)."""


Edge = tuple[str, str, str]  # (state, trigger, target)


@dataclass
class Run:
    """What a case run did: the root job as it ended, and every state and edge taken."""

    status: str
    output: Any = None
    error: Any = None
    path: list[str] = field(default_factory=list)
    attempts: dict[str, int] = field(default_factory=dict)
    steps: dict[str, Any] = field(default_factory=dict)
    state_history: dict[str, Any] = field(default_factory=dict)
    initial_data: Any = None
    elapsed_ms: int = 0
    visited: dict[str, set[str]] = field(default_factory=dict)  # blueprint -> states
    taken: dict[str, set[Edge]] = field(default_factory=dict)  # blueprint -> edges
    refused: list[dict[str, Any]] = field(default_factory=list)  # events the job refused

    def view(self) -> dict[str, Any]:
        """What `expect.assert` expressions see."""
        return {
            "status": self.status,
            "output": self.output,
            "error": self.error,
            "path": self.path,
            "attempts": self.attempts,
            "steps": self.steps,
            "state_history": self.state_history,
            "initial_data": self.initial_data,
            "elapsed_ms": self.elapsed_ms,
            "refused": self.refused,
        }


@dataclass(order=True)
class _Answer:
    at: int
    seq: int
    payload: dict[str, Any] = field(compare=False)
    result: dict[str, Any] = field(compare=False)


def check_input(blueprints: BlueprintSet, name: str, data: Any) -> str | None:
    """Why the server would refuse `data` as the blueprint's initial_data, or None."""
    blueprint = blueprints.blueprints[name]
    if not isinstance(data, dict):
        return "initial_data must be a JSON object"
    validator = blueprint.input_validator
    if validator is None:
        return None
    errors = sorted(f"{e.json_path}: {e.message}" for e in validator.iter_errors(data))
    return f"initial_data does not match the input_schema: {'; '.join(errors)}" if errors else None


def check_names(blueprints: BlueprintSet, case: Case) -> None:
    """CaseError for a `tasks:` key, an approval or an event in `send:` that no blueprint
    has (a typo would otherwise just never match)."""
    states = {name for bp in blueprints for name in bp.states}
    task_types = {
        spec.task_type
        for bp in blueprints
        for state in bp.states.values()
        for spec in _specs(state)
    }
    for key in case.tasks:
        if key not in states and key not in task_types:
            hint = did_you_mean(key, sorted(states | task_types))
            raise CaseError(f"tasks: {key!r} is neither a state nor a task type{hint}")
    approvals = {
        name for bp in blueprints for name, state in bp.states.items() if state.kind == "approval"
    }
    events = {
        state.event
        for bp in blueprints
        for state in bp.states.values()
        if isinstance(state, ListenState)
    }
    for message in case.send:
        if isinstance(message, Event) and message.event not in events:
            hint = did_you_mean(message.event, sorted(events))
            raise CaseError(f"send: no listen state waits for event {message.event!r}{hint}")
        if isinstance(message, Decision) and message.state not in approvals:
            hint = did_you_mean(message.state, sorted(approvals))
            raise CaseError(f"send: {message.state!r} is not an approval state{hint}")


def _specs(state: State) -> list[TaskSpec]:
    if isinstance(state, ParallelState):
        return state.task_specs
    spec = state.task_spec(None)
    return [spec] if spec is not None else []


async def run_case(blueprints: BlueprintSet, name: str, case: Case) -> Run:
    """Run `case` against blueprint `name` (its subflows come from `blueprints`)."""
    check_names(blueprints, case)
    refused = check_input(blueprints, name, case.initial_data)
    if refused is not None:
        return Run("rejected", error={"code": "invalid_input", "message": refused})
    clock = FakeClock(START_MS)
    with clock.installed():
        # A store of its own per case: each embedded store is a fakeredis server of its own,
        # dropped with it.
        store = await Store.connect("memory://")
        try:
            return await _Driver(store, blueprints, case, clock).run(name)
        finally:
            await store.close()


class _Driver:
    def __init__(self, store: Store, blueprints: BlueprintSet, case: Case, clock: FakeClock):
        self.case = case
        self.clock = clock
        self.orch = Orchestrator(
            store, Registry(blueprints, RuntimeSettings()), OrchestratorSettings()
        )
        self.orch.rng = random.Random(1)  # jitter and child ids: the same on every run
        self.store = store
        self.answers: list[_Answer] = []  # scripted answers not yet sent, by time
        self.held: set[str] = set()  # task ids the worker holds and has not answered
        # (at, seq, (kind, job id, since), message): what is sent when, to which wait
        self.messages: list[tuple[int, int, tuple[str, str, int], Message]] = []
        self.unsent = list(case.send)  # messages not yet matched to a question or a listen
        self.asked: set[tuple[str, str, int]] = set()  # (kind, job id, since) already matched
        self.refused: list[dict[str, Any]] = []
        self.jobs = [JOB_ID]  # the job and every subflow child it started
        self.seq = 0

    async def run(self, name: str) -> Run:
        blueprint = self.orch.blueprint(name)
        assert blueprint is not None
        pump = asyncio.create_task(self.orch.dispatcher.run(), name="interlock-test-pump")
        try:
            if not await self.orch.create(JOB_ID, blueprint, self.case.initial_data, client=CLIENT):
                raise CaseError("the embedded store already held a job: cases must not share one")
            await self._drive(START_MS + self.case.advance_ms)
            return await self._report()
        finally:
            self.orch.dispatcher.close()
            pump.cancel()
            await asyncio.gather(pump, return_exceptions=True)

    async def _drive(self, end_at: int) -> None:
        for _ in range(MAX_STEPS):
            await self.orch.join()
            records = await self._records()
            if records[JOB_ID].doc["status"] in TERMINAL:
                return
            if await self._lease_queued(records):
                continue
            self._match_questions(records)
            due = [a.at for a in self.answers] + [m[0] for m in self.messages]
            for record in records.values():
                if record.doc["status"] not in TERMINAL:
                    machine = await self.orch.registry.machine(record.doc["hash"], self.store)
                    when = machine.next_due(record.doc, leases_of(record))
                    if when is not None:
                        due.append(when)
            if not due or min(due) > end_at:
                self.clock.advance_to(end_at)
                return
            self.clock.advance_to(min(due))
            await self._heartbeat()
            await self._send_due()
            await background.fire_timers(self.orch)
        raise CaseError(f"the job took more than {MAX_STEPS} steps: a loop?")

    async def _records(self) -> dict[str, JobRecord]:
        records: dict[str, JobRecord] = {}
        for job_id in self.jobs:
            record = await self.store.read_job(job_id)
            if record is None:
                continue
            records[job_id] = record
            subflow = record.doc["subflow"]
            book = record.doc["parallel"]  # and its subflow branches' children
            running = book.get("children", {}) if book is not None else {}
            children = [c["child_id"] for c in running.values()]
            if subflow is not None:
                children.append(subflow["child_id"])
            self.jobs.extend(c for c in children if c not in self.jobs)  # read on the next turn
        return records

    async def _lease_queued(self, records: dict[str, JobRecord]) -> bool:
        """Take every queued task, as a worker polling for all task types would."""
        queued = [
            record.doc["tasks"][task_id]
            for record in records.values()
            for task_id, lease in leases_of(record).items()
            if lease.state == "queued" and task_id in record.doc["tasks"]
        ]
        if not queued:
            return False
        skills = tuple(sorted({task["type"] for task in queued}))
        payloads = await self.orch.next_tasks(WORKER, skills, POLL_S, len(queued))
        if not payloads:
            raise CaseError(f"queued tasks were not leased within {POLL_S:g} s: {skills}")
        for payload in sorted(payloads, key=_dispatch_order):
            self._script(payload)
        return True

    def _script(self, payload: dict[str, Any]) -> None:
        metadata = payload["metadata"]
        state, attempt, task_type = metadata["state"], int(metadata["attempt"]), payload["type"]
        context = {
            "params": payload["params"],
            "attempt": attempt,
            "state": state,
            "branch": metadata.get("branch"),
            "task_type": task_type,
        }
        try:
            outcome = self.case.outcome(state, task_type, context)
            if outcome is None:
                raise CaseError(
                    f"no outcome for task {task_type!r} of state {state!r} (attempt {attempt}); "
                    f"add one under `tasks:` keyed {state!r} or {task_type!r}"
                )
            self.held.add(payload["task_id"])
            if outcome.timeout:
                return
            data = outcome.data.render(context) if outcome.data is not None else None
        except ExpressionError as exc:
            raise CaseError(f"the script for state {state!r}: {exc}") from None
        result: dict[str, Any] = {
            "job_id": payload["job_id"],
            "task_id": payload["task_id"],
            "status": outcome.status,
            "data": data,
        }
        if outcome.error is not None:
            result["error"] = dict(outcome.error)
        self.seq += 1
        self.answers.append(_Answer(self.clock.now + outcome.delay_ms, self.seq, payload, result))
        self.answers.sort()

    def _match_questions(self, records: dict[str, JobRecord]) -> None:
        """Schedule the first unsent decision for each approval state that now asks, and the
        first unsent event for each listen state that now listens for it."""
        for job_id, record in records.items():
            approval = record.doc["approval"]
            if record.doc["status"] == JobStatus.WAITING_FOR_HUMAN and approval is not None:
                self._match(("approval", job_id, approval["asked_at"]), approval["state"])
            book = record.doc.get("listen")
            if book is not None:
                self._match(("listen", job_id, book["since"]), book["event"])

    def _match(self, key: tuple[str, str, int], name: str) -> None:
        """Schedule the first unsent message for the wait `key` (kind, job id, since) on
        the approval state or event `name`."""
        if key in self.asked:
            return
        for message in self.unsent:
            if _waits_for(message) == (key[0], name):
                self.unsent.remove(message)
                self.asked.add(key)
                self.seq += 1
                self.messages.append((key[2] + message.after_ms, self.seq, key, message))
                self.messages.sort(key=lambda m: m[:2])
                return

    async def _heartbeat(self) -> None:
        """The worker is alive and says which tasks it holds (it does, until it answers)."""
        if self.held:
            await self.orch.heartbeat(WORKER, sorted(self.held), 86_400_000)

    async def _send_due(self) -> None:
        now = self.clock.now
        while self.answers and self.answers[0].at <= now:
            answer = self.answers.pop(0)
            self.held.discard(answer.payload["task_id"])
            await self.orch.submit_result(WORKER, answer.result)
        while self.messages and self.messages[0][0] <= now:
            _, _, key, message = self.messages.pop(0)
            if isinstance(message, Decision):
                await self.orch.decide(key[1], None, message.decision)
            elif not await self._send_event(key[1], message):
                self.asked.discard(key)  # still listening: the next event for it may come

    async def _send_event(self, job_id: str, event: Event) -> bool:
        """Deliver the event as the server does; one it refuses goes to `refused`. False
        when its payload broke the schema (the job keeps listening)."""
        refusal: dict[str, Any] = {"event": event.event, "at_ms": self.clock.now - START_MS}
        try:
            outcome = await self.orch.controls.send_event(job_id, CLIENT, event.event, event.data)
        except InvalidPayload as exc:
            refusal.update(code="invalid_payload", message=str(exc), problems=exc.problems)
            self.refused.append(refusal)
            return False
        if isinstance(outcome, Ignored) or outcome is None:
            refusal.update(code="not_listening", message="the job no longer listens for it")
            self.refused.append(refusal)
        return True

    async def _report(self) -> Run:
        run = Run("pending")
        for job_id in self.jobs:
            record = await self.store.read_job(job_id)
            if record is None:
                continue
            doc = record.doc
            events = await self.store.history(job_id)
            entered = [str(e["state"]) for e in events if e["event"] == "state_entered"]
            run.visited.setdefault(doc["blueprint"], set()).update(entered)
            blueprint = (await self.orch.registry.machine(doc["hash"], self.store)).bp
            taken = run.taken.setdefault(doc["blueprint"], set())
            for event in events:
                if event["event"] == "state_left":
                    taken.add(edge_taken(blueprint.states[event["state"]], event))
            if job_id != JOB_ID:
                continue
            run.status = str(doc["status"])
            run.output, run.error = doc["result"], doc["error"]
            run.path = entered
            run.attempts = dict(
                Counter(str(e["state"]) for e in events if e["event"] == "task_queued")
            )
            run.steps, run.state_history = doc["steps"], doc["state_history"]
            run.initial_data = doc["initial_data"]
            run.elapsed_ms = self.clock.now - START_MS
        run.refused = self.refused
        return run


def edge_taken(state: Any, event: dict[str, Any]) -> Edge:
    """The declared transition a `state_left` event followed. A trigger the state does not
    declare (a timeout, an error code) leaves by its `failure` transition."""
    via, target = str(event["via"]), str(event["to"])
    if state.target(via) == target:
        return (state.name, via, target)
    for trigger in ("failure", *(t.trigger for t in state.transitions)):
        if state.target(trigger) == target:
            return (state.name, trigger, target)
    return (state.name, via, target)


def _waits_for(message: Message) -> tuple[str, str]:
    if isinstance(message, Decision):
        return ("approval", message.state)
    return ("listen", message.event)


def _dispatch_order(payload: dict[str, Any]) -> tuple[str, int, str]:
    """Tasks in the order their job dispatched them (`<job id>-<seq>`: job-2 before job-10),
    whatever order the lease gave them in."""
    task_id = str(payload["task_id"])
    job_id = str(payload["job_id"])
    seq = task_id.removeprefix(f"{job_id}-")
    return (job_id, int(seq) if seq.isdigit() else -1, task_id)
