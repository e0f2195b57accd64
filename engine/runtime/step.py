"""One change of one job in progress, and the moves every state kind shares.

A `Step` carries everything a rule needs: the job document it changes, the effects it
collects for the store, the clock (`now`), the randomness (`rng`: a `SystemRandom` wherever
its output is a secret) and the kinds table. The rules of each state kind (`Kind`) get the
step and the state and call back only into the step, never into each other or the machine:
"enter a state", "move along an edge", "fail a state", "finish the job", "record an
output", "note a history event", "build the expression context".
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Any, Generic, TypeVar

from engine import functions
from engine.blueprint.model import Blueprint, PerKind, State
from engine.errors import ExpressionError
from engine.runtime.jobdoc import (
    DONE_TASKS_KEPT,
    EXPRESSION_ERROR,
    MAX_TRANSITIONS,
    TERMINAL,
    BranchData,
    Effects,
    JobDoc,
    JobStatus,
    RuntimeSettings,
    TaskRecord,
    member,
)

S = TypeVar("S", bound=State)

Next = tuple[str, str]
"""(trigger, target state): where a state that needs no outside input goes at once."""


class Kind(Generic[S]):
    """The rules of one state kind, as hooks on a step. The defaults suit a kind that
    dispatches no task and waits for no timer; `engine/runtime/kinds.py` holds the table."""

    def enter(self, step: Step, state: S) -> Next | None:
        """The job has just entered `state`: act, and return where to go on at once, or
        None when the job now waits for something (or has ended)."""
        raise NotImplementedError

    def task_succeeded(
        self, step: Step, state: S, task: TaskRecord, status: str, data: Any
    ) -> None:
        """A task of this state answered with a status other than failure."""
        raise AssertionError(f"{state.kind} states dispatch no tasks")

    def gave_up(
        self, step: Step, state: S, task: TaskRecord, error: dict[str, Any], trigger: str
    ) -> None:
        """A task of this state failed for good (no retry left); `trigger` is `failure` or
        `timeout`."""
        raise AssertionError(f"{state.kind} states dispatch no tasks")

    def start_child(self, step: Step, state: S, branch: int) -> None:
        """Start the child job of a branch that runs a subflow, not a task."""
        raise AssertionError(f"{state.kind} states have no subflow branches")

    def task_context(self, step: Step, state: S, branch: int | None) -> dict[str, Any]:
        """Extra names a task's `params` may use (`item`, `index` in a parallel state)."""
        return {}

    def on_timer(self, step: Step, state: S, child: JobDoc | None) -> None:
        """Whatever of this state has fallen due (`child`: a subflow's child, when read)."""

    def due(self, doc: JobDoc) -> list[int]:
        """When `on_timer` has something to do for this state."""
        return []


class Step:
    """A change being decided: see the module docstring."""

    __slots__ = (
        "bp",
        "branch",
        "children",
        "doc",
        "fx",
        "kinds",
        "max_transitions",
        "now",
        "rng",
        "settings",
    )

    def __init__(
        self,
        *,
        bp: Blueprint,
        settings: RuntimeSettings,
        kinds: PerKind[Kind[Any]],
        doc: JobDoc,
        fx: Effects,
        now: int,
        rng: random.Random,
        branch: BranchData | None = None,
        children: Mapping[str, JobDoc | None] | None = None,
    ) -> None:
        self.bp = bp  # the blueprint the job is pinned to
        self.settings = settings
        self.kinds = kinds  # the rules of each state kind
        self.doc = doc  # changed in place; the orchestrator commits it
        self.fx = fx  # what the store must do besides writing the document
        self.now = now  # epoch ms; one instant for the whole change
        self.rng = rng
        # A parallel state's stored items and results, as far as read (engine/runtime/parallel.py)
        self.branch = branch if branch is not None else BranchData()
        # Child jobs of subflow branches read for this change, by id (None: not found)
        self.children = children if children is not None else {}
        self.max_transitions = bp.max_transitions or settings.max_transitions

    # -- looking things up -----------------------------------------------------------------

    def state(self, name: str) -> State:
        return self.bp.states[name]

    def rules(self, state: State) -> Kind[Any]:
        return self.kinds[state.kind]

    def context(self, **extra: Any) -> dict[str, Any]:
        """What expressions and templates see (plus `item`/`index` and the like). Their
        `now()` and `uuid()` read this change's instant and random source."""
        functions.moment.set(functions.Moment(self.now, self.rng))
        doc = self.doc
        return {
            "initial_data": doc["initial_data"],
            "state_history": doc["state_history"],
            "steps": doc["steps"],
            "job": {"id": doc["id"], "blueprint": doc["blueprint"], "version": doc["version"]},
            **extra,
        }

    @property
    def ended(self) -> bool:
        return self.doc["status"] in TERMINAL

    @property
    def paused(self) -> bool:
        """A client paused the job: it does not leave its state (engine/runtime/pausing.py)."""
        return self.doc.get("paused") is not None

    # -- history ---------------------------------------------------------------------------

    def event(self, event: str, **data: Any) -> None:
        """A history event at `now` (fields that are None are left out)."""
        entry = {"at": self.now, "event": event}
        entry.update((k, v) for k, v in data.items() if v is not None)
        self.fx.history.append(entry)

    def task_event(self, event: str, task: TaskRecord, **data: Any) -> None:
        """A history event about one task: its state, id, attempt and branch, then `data`."""
        entry = {"at": self.now, "event": event, "state": task["state"], "task_id": task["id"]}
        entry["attempt"] = task["attempt"]
        if task["branch"] is not None:
            entry["branch"] = task["branch"]
        entry.update((k, v) for k, v in data.items() if v is not None)
        self.fx.history.append(entry)

    # -- moving between states -------------------------------------------------------------

    def record(self, state: str, data: Any) -> None:
        """A state's output: `steps.<state>`, and merged into `state_history` if a dict."""
        merged = isinstance(data, dict)
        self.output(state, data, merged=merged)
        if merged:
            self.doc["state_history"].update(data)

    def output(self, state: str, data: Any, *, merged: bool = False) -> None:
        """Set `steps.<state>` (stored once, as a field of its own: see outputs.py)."""
        self.doc["steps"][state] = data
        self.fx.outputs.append((state, data, merged))

    def move(self, state: State, via: str, target: str) -> None:
        """Leave `state` by its `via` trigger and enter `target` (on resume, if paused)."""
        if self._hold({"from": state.name, "via": via, "to": target}):
            return
        self.event("state_left", state=state.name, via=via, to=target)
        self.enter(target)

    def follow(self, state: State, trigger: str) -> None:
        """Leave `state` by a trigger the compiler guarantees it has."""
        target = state.target(trigger)
        assert target is not None, f"the compiler guarantees {state.name}.{trigger}"
        self.move(state, trigger, target)

    def enter(self, name: str) -> None:
        """Enter `name`, and go on through states that need no outside input."""
        while True:
            self.doc["transitions"] += 1
            if self.doc["transitions"] > self.max_transitions:
                message = (
                    f"the job made more than {self.max_transitions} transitions (a loop?); "
                    "raise limits.max_transitions if this is intended"
                )
                self.finish(
                    JobStatus.FAILED, {"code": MAX_TRANSITIONS, "state": name, "message": message}
                )
                return
            state = self.state(name)
            self.doc["state"] = name
            self.event("state_entered", state=name, kind=state.kind)
            try:
                following = self.rules(state).enter(self, state)
            except ExpressionError as exc:
                self.expression_failed(name, exc)
                return
            if following is None:
                return
            via, name = following
            self.event("state_left", state=state.name, via=via, to=name)

    def expression_failed(self, state: str, exc: ExpressionError) -> None:
        """An expression of `state` could not be evaluated: the job fails, naming both."""
        self.cancel_tasks("expression error")
        message = f"state {state!r}: {exc}"
        self.finish(
            JobStatus.FAILED, {"code": EXPRESSION_ERROR, "state": state, "message": message}
        )

    def fail_state(self, state: State, trigger: str, error: dict[str, Any]) -> None:
        """The state failed for good with `error`: follow the most specific transition it
        declares, `error:<the error's code>`, then `trigger` (`timeout`, say), then
        `failure`; with none, fail the job. `steps.<state>.error` keeps the error, so the
        state caught to can read it (and an `end` state can raise it again)."""
        self.output(state.name, {"error": error})
        self.doc["failed_state"] = state.name
        for via in (f"error:{error.get('code')}", trigger, "failure"):
            target = state.target(via)
            if target is not None:
                self.move(state, via, target)
                return
        self.finish(JobStatus.FAILED, error)

    def finish(self, status: JobStatus, error: dict[str, Any] | None) -> None:
        """End the job with `status` (on resume, if paused): nothing of it is due any more."""
        if self._hold({"end": str(status), "error": error}):
            return
        doc = self.doc
        doc["status"] = status
        doc["error"] = error
        doc["finished_at"] = self.now
        doc["retries"] = []
        doc["wait_until"] = None
        doc["approval"] = None
        book = doc["parallel"]
        if book is not None:  # its stored items and results go now, not after the retention
            self.fx.branch_items.clear()
            self.fx.branch_results.clear()
            self.fx.drop_branches = max(self.fx.drop_branches, book["count"])
            for child in book.get("children", {}).values():  # subflow branches still running
                self.fx.cancel_children.append(child["child_id"])
        doc["parallel"] = None
        if doc.get("listen") is not None:
            doc["listen"] = None
        self.fx.terminal = True
        self.fx.notify_parent = doc["parent"] is not None
        slot = doc.get("slot")
        if slot is not None:  # its slot (or place in line) is owed back: concurrency.py
            if slot["enter"] is not None:
                slot["left"] = slot["enter"]
            slot["owed"] = True
            slot["enter"] = None
            slot["check_at"] = self.now + self.settings.slot_check_ms
        self.event(f"job_{status}", state=doc["state"], error=error)

    def _hold(self, held: dict[str, Any]) -> bool:
        """While paused, keep the job's next move for its resume, and say so (True)."""
        book = self.doc.get("paused")
        if book is None:
            return False
        if book["held"] is None:  # the state has let go of what could move it again
            book["held"] = held
            self.event("move_held", state=self.doc["state"], **held)
        return True

    def abort(self, status: JobStatus, error: dict[str, Any] | None) -> None:
        """End the job from outside its flow (cancel, job timeout): stop all it runs, paused
        or not."""
        if self.doc.get("paused") is not None:
            self.doc["paused"] = None
        self.cancel_tasks(f"job {status}")
        subflow = self.doc["subflow"]
        if subflow is not None:
            self.fx.cancel_children.append(subflow["child_id"])
            self.doc["subflow"] = None
        self.finish(status, error)

    # -- tasks -----------------------------------------------------------------------------

    def retire(self, task_id: str, *, answered: bool = True) -> TaskRecord:
        """Remove an active task (answered, timed out, cancelled) and return its record.

        A queued task also leaves its queue; one queued by this very change is simply not
        enqueued. A task taken back unanswered is remembered as such, so that its late
        result is told apart (`superseded`) from a repeated one (`duplicate`)."""
        doc, fx = self.doc, self.fx
        task = doc["tasks"].pop(task_id)
        pending = next((e for e in fx.enqueue if e.task_id == task_id), None)
        if pending is not None:
            fx.enqueue.remove(pending)
        else:
            lease = fx.leases.get(task_id)
            if lease is not None and lease.state == "queued":
                fx.dequeue.append((task["type"], member(doc["id"], task_id)))
            fx.dropped.append(task_id)
        doc["done_tasks"] = [*doc["done_tasks"][-(DONE_TASKS_KEPT - 1) :], task_id]
        if not answered:
            taken_back = doc.get("taken_back", [])
            doc["taken_back"] = [*taken_back[-(DONE_TASKS_KEPT - 1) :], task_id]
        return task

    def cancel_tasks(self, reason: str, state: str | None = None) -> None:
        """Retire every active task (of `state` only, if given), telling workers to stop
        the ones they hold."""
        for task_id, task in list(self.doc["tasks"].items()):
            if state is not None and task["state"] != state:
                continue
            lease = self.fx.leases.get(task_id)
            self.retire(task_id, answered=False)
            if lease is not None and lease.state == "leased":
                self.fx.cancel_on_worker.append((lease.worker, task_id))
            self.task_event("task_cancelled", task, reason=reason)
