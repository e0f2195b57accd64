"""The transition rules: pure functions from (job document, event) to (new document, effects).

Nothing here touches Redis or the network; the orchestrator reads a job, calls one of
`start`, `on_result`, `on_timer` or `cancel`, and commits the returned effects in one
guarded script. A job document is a plain JSON-able dict (see `new_job`).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from engine.blueprint.model import (
    Blueprint,
    ChoiceState,
    EndState,
    SetState,
    State,
    TaskSpec,
    TaskState,
    WaitState,
)
from engine.errors import ExpressionError

TERMINAL = frozenset({"finished", "failed", "cancelled"})
DONE_TASKS_KEPT = 16

# Error codes the engine itself produces.
TIMEOUT = "TIMEOUT"  # run or heartbeat timeout, worker lost
DISPATCH_TIMEOUT = "DISPATCH_TIMEOUT"  # no worker took the task in time
JOB_TIMEOUT = "JOB_TIMEOUT"  # the job's result_timeout passed
INVALID_OUTPUT = "INVALID_OUTPUT"  # a result broke the state's output_schema
UNDECLARED_STATUS = "UNDECLARED_STATUS"  # a worker status the state has no transition for
NO_CHOICE_MATCHED = "NO_CHOICE_MATCHED"
EXPRESSION_ERROR = "EXPRESSION_ERROR"
MAX_TRANSITIONS = "MAX_TRANSITIONS"
UNSUPPORTED_STATE = "UNSUPPORTED_STATE"


@dataclass(frozen=True, slots=True)
class RuntimeSettings:
    default_run_timeout_ms: int = 3_600_000
    heartbeat_timeout_ms: int = 60_000  # a leased task's worker must heartbeat this often
    max_transitions: int = 1000
    retention_ms: int = 7 * 86_400_000  # finished jobs are kept this long


@dataclass(frozen=True, slots=True)
class Lease:
    """The lease fields of a job hash, maintained by Lua when a worker takes a task."""

    task: str = ""
    tstate: str = ""  # "", "queued" or "leased"
    worker: str = ""
    leased_at: int = 0


@dataclass(slots=True)
class Effects:
    """What a transition asks the store to do, besides writing the new document."""

    history: list[dict[str, Any]] = field(default_factory=list)
    enqueue: dict[str, Any] | None = None  # task type, member, score, payload, lease_ms
    dequeue: tuple[str, str] | None = None  # (task type, member)
    lease: Lease = Lease()
    cancel_on_worker: tuple[str, str] | None = None  # (worker id, task id)
    terminal: bool = False


@dataclass(frozen=True, slots=True)
class Ignored:
    reason: str


def new_job(
    *,
    job_id: str,
    blueprint: Blueprint,
    client: str,
    initial_data: Any,
    now: int,
    webhook_url: str | None = None,
    dispatch_timeout_ms: int | None = None,
    result_timeout_ms: int | None = None,
) -> dict[str, Any]:
    return {
        "id": job_id,
        "blueprint": blueprint.name,
        "version": blueprint.version,
        "hash": blueprint.content_hash,
        "client": client,
        "status": "pending",
        "state": None,
        "created_at": now,
        "updated_at": now,
        "finished_at": None,
        "initial_data": initial_data,
        "state_history": {},
        "steps": {},
        "transitions": 0,
        "task": None,
        "wait_until": None,
        "deadline": now + result_timeout_ms if result_timeout_ms else None,
        "dispatch_timeout_ms": dispatch_timeout_ms,
        "webhook_url": webhook_url,
        "result": None,
        "error": None,
        "seq": 0,
        "hseq": 0,
        "done_tasks": [],
    }


def member(job_id: str, task_id: str) -> str:
    return f"{job_id}|{task_id}"


def queue_score(priority: int, now: int) -> float:
    """Higher priority first, then oldest first (ZPOPMIN order)."""
    return float(-priority * (1 << 41) + (now - 1_600_000_000_000))


class Machine:
    """Applies a blueprint's rules to one job document."""

    def __init__(self, blueprint: Blueprint, settings: RuntimeSettings) -> None:
        self.bp = blueprint
        self.settings = settings
        self.max_transitions = blueprint.max_transitions or settings.max_transitions

    # -- entry points ----------------------------------------------------------------------

    def start(self, doc: dict[str, Any], now: int) -> Effects:
        fx = Effects()
        self._event(doc, fx, now, "job_created", state=self.bp.start)
        self._enter(doc, self.bp.start, now, fx, rng=random.Random())
        return fx

    def on_result(
        self,
        doc: dict[str, Any],
        lease: Lease,
        result: dict[str, Any],
        now: int,
        rng: random.Random,
    ) -> Effects | Ignored:
        task = doc.get("task")
        task_id = str(result.get("task_id", ""))
        if doc["status"] in TERMINAL:
            return Ignored("job_cancelled" if doc["status"] == "cancelled" else "job_finished")
        if not task or task["id"] != task_id:
            return Ignored("duplicate" if task_id in doc["done_tasks"] else "stale_task")
        if lease.tstate != "leased":
            return Ignored("not_leased")
        worker = str(result.get("worker_id", ""))
        if lease.worker != worker:
            return Ignored("worker_mismatch")
        fx = Effects()
        state = self.bp.states[task["state"]]
        spec = self._spec(state)
        status = result.get("status") or "success"
        data = result.get("data")
        self._event(
            doc,
            fx,
            lease.leased_at,
            "task_picked_up",
            state=state.name,
            task_id=task_id,
            worker=worker,
            attempt=task["attempt"],
            waited_ms=max(0, lease.leased_at - task["queued_at"]),
        )
        self._event(
            doc,
            fx,
            now,
            "task_result",
            state=state.name,
            task_id=task_id,
            worker=worker,
            attempt=task["attempt"],
            status=status,
            duration_ms=max(0, now - lease.leased_at),
            **({"error": result["error"]} if result.get("error") else {}),
        )
        self._task_done(doc, task_id)
        if status == "failure":
            raw_error = result.get("error")
            error: dict[str, Any] = raw_error if isinstance(raw_error, dict) else {}
            code = str(error.get("code") or "TRANSIENT_ERROR")
            self._fail_task(
                doc,
                state,
                spec,
                code,
                str(error.get("message", "")),
                now,
                fx,
                rng,
                details=error.get("details"),
            )
            return fx
        if status == "cancelled":
            self._fail_task(
                doc, state, spec, "TRANSIENT_ERROR", "the worker cancelled the task", now, fx, rng
            )
            return fx
        if spec.output_schema is not None and status == "success":
            problems = sorted(spec.output_schema.iter_errors(data), key=lambda e: list(e.path))
            if problems:
                details = [f"{e.json_path}: {e.message}" for e in problems[:20]]
                self._fail_task(
                    doc,
                    state,
                    spec,
                    INVALID_OUTPUT,
                    "the result does not match the state's output_schema",
                    now,
                    fx,
                    rng,
                    details=details,
                )
                return fx
        target = state.target(status)
        if target is None:
            self._fail_task(
                doc,
                state,
                spec,
                UNDECLARED_STATUS,
                f"state {state.name!r} has no transition for status {status!r}",
                now,
                fx,
                rng,
            )
            return fx
        self._record(doc, state.name, data)
        self._leave(doc, state, now, fx, status)
        self._enter(doc, target, now, fx, rng)
        return fx

    def on_timer(
        self,
        doc: dict[str, Any],
        lease: Lease,
        now: int,
        rng: random.Random,
        worker_alive: dict[str, Any] | None,
    ) -> Effects | None:
        """Handle whatever deadline has passed; None when nothing is due yet."""
        if doc["status"] in TERMINAL:
            return None
        fx = Effects(lease=lease)
        deadline = doc.get("deadline")
        if deadline is not None and now >= deadline:
            self._cancel_task(doc, lease, fx)
            self._finish(
                doc,
                now,
                fx,
                "failed",
                error={
                    "code": JOB_TIMEOUT,
                    "message": "the job did not end within its result_timeout",
                    "state": doc["state"],
                },
            )
            return fx
        task = doc.get("task")
        if task is not None:
            state = self.bp.states[task["state"]]
            spec = self._spec(state)
            if task.get("retry_at") is not None:
                if now >= task["retry_at"]:
                    self._dispatch(doc, state, spec, task["attempt"], now, fx)
                    return fx
            elif lease.tstate == "queued":
                dispatch = task.get("dispatch_deadline")
                if dispatch is not None and now >= dispatch:
                    fx.dequeue = (task["type"], member(doc["id"], task["id"]))
                    fx.lease = Lease()
                    self._event(
                        doc,
                        fx,
                        now,
                        "task_timeout",
                        state=state.name,
                        task_id=task["id"],
                        attempt=task["attempt"],
                        timeout="dispatch",
                    )
                    self._task_done(doc, task["id"])
                    self._fail_task(
                        doc,
                        state,
                        spec,
                        DISPATCH_TIMEOUT,
                        "no worker took the task within its dispatch timeout",
                        now,
                        fx,
                        rng,
                    )
                    return fx
            elif lease.tstate == "leased":
                reason = self._lease_broken(task, lease, now, worker_alive)
                if reason is not None:
                    fx.lease = Lease()
                    fx.cancel_on_worker = (lease.worker, task["id"])
                    self._event(
                        doc,
                        fx,
                        now,
                        "task_timeout",
                        state=state.name,
                        task_id=task["id"],
                        worker=lease.worker,
                        attempt=task["attempt"],
                        timeout=reason,
                    )
                    self._task_done(doc, task["id"])
                    self._fail_task(doc, state, spec, TIMEOUT, _TIMEOUT_TEXT[reason], now, fx, rng)
                    return fx
                task["checked_at"] = now
                return fx
        wait_until = doc.get("wait_until")
        if wait_until is not None and now >= wait_until:
            state = self.bp.states[doc["state"]]
            doc["wait_until"] = None
            self._leave(doc, state, now, fx, "next")
            self._enter(doc, _required(state.target("next")), now, fx, rng)
            return fx
        return None if not fx.history else fx

    def on_progress(
        self, doc: dict[str, Any], lease: Lease, worker: str, task_id: str, payload: Any, now: int
    ) -> Effects | Ignored:
        """A progress event from the worker holding the task: kept on the job and in history."""
        task = doc.get("task")
        if doc["status"] in TERMINAL or not task or task["id"] != task_id:
            return Ignored("stale_task")
        if lease.tstate != "leased" or lease.worker != worker:
            return Ignored("worker_mismatch")
        fx = Effects(lease=lease)
        details = payload if isinstance(payload, dict) else {"value": payload}
        doc["progress"] = {"at": now, "state": task["state"], **details}
        self._event(
            doc,
            fx,
            now,
            "task_progress",
            state=task["state"],
            task_id=task_id,
            worker=worker,
            **{k: v for k, v in details.items() if k in ("progress", "message")},
        )
        return fx

    def cancel(self, doc: dict[str, Any], lease: Lease, now: int) -> Effects | Ignored:
        if doc["status"] in TERMINAL:
            return Ignored(f"job already {doc['status']}")
        fx = Effects(lease=lease)
        self._cancel_task(doc, lease, fx)
        self._finish(doc, now, fx, "cancelled", error=None)
        return fx

    def next_due(self, doc: dict[str, Any], lease: Lease) -> int | None:
        """The earliest moment something can happen to this job without outside input."""
        if doc["status"] in TERMINAL:
            return None
        due: list[int] = []
        if doc.get("deadline") is not None:
            due.append(doc["deadline"])
        if doc.get("wait_until") is not None:
            due.append(doc["wait_until"])
        task = doc.get("task")
        if task is not None:
            if task.get("retry_at") is not None:
                due.append(task["retry_at"])
            elif lease.tstate == "queued" and task.get("dispatch_deadline") is not None:
                due.append(task["dispatch_deadline"])
            elif lease.tstate == "leased":
                due.append(lease.leased_at + task["run_ms"])
                due.append(max(task.get("checked_at") or 0, lease.leased_at) + task["lease_ms"])
        return min(due) if due else None

    # -- internals --------------------------------------------------------------------------

    def _context(self, doc: dict[str, Any], **extra: Any) -> dict[str, Any]:
        return {
            "initial_data": doc["initial_data"],
            "state_history": doc["state_history"],
            "steps": doc["steps"],
            "job": {"id": doc["id"], "blueprint": doc["blueprint"], "version": doc["version"]},
            **extra,
        }

    def _event(self, doc: dict[str, Any], fx: Effects, now: int, event: str, **data: Any) -> None:
        fx.history.append(
            {"at": now, "event": event, **{k: v for k, v in data.items() if v is not None}}
        )

    def _record(self, doc: dict[str, Any], state: str, data: Any) -> None:
        doc["steps"][state] = data
        if isinstance(data, dict):
            doc["state_history"].update(data)

    def _task_done(self, doc: dict[str, Any], task_id: str) -> None:
        doc["done_tasks"] = [*doc["done_tasks"][-(DONE_TASKS_KEPT - 1) :], task_id]

    def _spec(self, state: State) -> TaskSpec:
        assert isinstance(state, TaskState)
        assert state.spec is not None
        return state.spec

    def _leave(self, doc: dict[str, Any], state: State, now: int, fx: Effects, via: str) -> None:
        self._event(doc, fx, now, "state_left", state=state.name, via=via)

    def _enter(
        self, doc: dict[str, Any], name: str, now: int, fx: Effects, rng: random.Random
    ) -> None:
        """Move into `name` and on through states that need no outside input."""
        while True:
            doc["transitions"] += 1
            if doc["transitions"] > self.max_transitions:
                self._finish(
                    doc,
                    now,
                    fx,
                    "failed",
                    error={
                        "code": MAX_TRANSITIONS,
                        "state": name,
                        "message": f"the job made more than {self.max_transitions} transitions "
                        "(a loop?); raise limits.max_transitions if this is intended",
                    },
                )
                return
            state = self.bp.states[name]
            doc["state"] = name
            doc["task"] = None
            self._event(doc, fx, now, "state_entered", state=name, kind=state.kind)
            try:
                following = self._run_state(doc, state, now, fx)
            except ExpressionError as exc:
                self._finish(
                    doc,
                    now,
                    fx,
                    "failed",
                    error={
                        "code": EXPRESSION_ERROR,
                        "state": name,
                        "message": f"state {name!r}: {exc}",
                    },
                )
                return
            if following is None:
                return
            trigger, name = following
            self._leave(doc, state, now, fx, trigger)

    def _run_state(
        self, doc: dict[str, Any], state: State, now: int, fx: Effects
    ) -> tuple[str, str] | None:
        """Run one state. Returns (trigger, next state) to go on; None when the job waits or
        ends."""
        if isinstance(state, SetState):
            assert state.values is not None
            values = state.values.render(self._context(doc))
            self._record(doc, state.name, values)
            return "next", _required(state.target("next"))
        if isinstance(state, ChoiceState):
            context = self._context(doc)
            for index, rule in enumerate(state.rules):
                if rule.when.truthy(context):
                    return f"when[{index}]", rule.goto
            if state.otherwise is not None:
                return "otherwise", state.otherwise
            self._finish(
                doc,
                now,
                fx,
                "failed",
                error={
                    "code": NO_CHOICE_MATCHED,
                    "state": state.name,
                    "message": f"no condition of choice {state.name!r} held, and it has no "
                    "otherwise",
                },
            )
            return None
        if isinstance(state, EndState):
            context = self._context(doc)
            output = (
                state.output.render(context) if state.output is not None else doc["state_history"]
            )
            error = None
            if state.outcome == "failed":
                given = state.error.render(context) if state.error is not None else {}
                error = {
                    "code": str(given.get("code") or "FAILED"),
                    "message": str(
                        given.get("message") or f"the job ended in state {state.name!r}"
                    ),
                    "state": state.name,
                }
            doc["result"] = output
            self._finish(doc, now, fx, state.outcome, error=error)
            return None
        if isinstance(state, TaskState):
            self._dispatch(doc, state, self._spec(state), 1, now, fx)
            return None
        if isinstance(state, WaitState):
            if state.seconds is not None:
                until = now + int(state.seconds * 1000)
            else:
                assert state.until is not None
                until = _parse_time(state.until.render(self._context(doc)))
            doc["wait_until"] = until
            doc["status"] = "waiting"
            return None
        self._finish(
            doc,
            now,
            fx,
            "failed",
            error={
                "code": UNSUPPORTED_STATE,
                "state": state.name,
                "message": f"{state.kind} states are not supported by this server version yet",
            },
        )
        return None

    def _dispatch(
        self, doc: dict[str, Any], state: State, spec: TaskSpec, attempt: int, now: int, fx: Effects
    ) -> None:
        doc["seq"] += 1
        task_id = f"{doc['id']}-{doc['seq']}"
        params = spec.params.render(self._context(doc))
        dispatch_ms = doc.get("dispatch_timeout_ms")
        if dispatch_ms is None and spec.timeouts.dispatch is not None:
            dispatch_ms = int(spec.timeouts.dispatch * 1000)
        run_ms = (
            int(spec.timeouts.run * 1000)
            if spec.timeouts.run
            else self.settings.default_run_timeout_ms
        )
        heartbeat_ms = (
            int(spec.timeouts.heartbeat * 1000)
            if spec.timeouts.heartbeat
            else self.settings.heartbeat_timeout_ms
        )
        doc["task"] = {
            "id": task_id,
            "type": spec.task_type,
            "state": state.name,
            "attempt": attempt,
            "queued_at": now,
            "dispatch_deadline": now + dispatch_ms if dispatch_ms else None,
            "run_ms": run_ms,
            "lease_ms": min(run_ms, heartbeat_ms),
            "heartbeat_ms": heartbeat_ms,
            "retry_at": None,
        }
        doc["status"] = "queued"
        payload = {
            "job_id": doc["id"],
            "task_id": task_id,
            "type": spec.task_type,
            "params": params if isinstance(params, dict) else {"value": params},
            "priority": spec.priority,
            "tracing_context": {},
            "metadata": {"state": state.name, "attempt": attempt, "blueprint": doc["blueprint"]},
        }
        fx.enqueue = {
            "type": spec.task_type,
            "member": member(doc["id"], task_id),
            "score": queue_score(spec.priority, now),
            "payload": payload,
            "lease_ms": min(run_ms, heartbeat_ms),
        }
        fx.lease = Lease(task=task_id, tstate="queued")
        self._event(
            doc,
            fx,
            now,
            "task_queued",
            state=state.name,
            task_id=task_id,
            task_type=spec.task_type,
            attempt=attempt,
        )

    def _fail_task(
        self,
        doc: dict[str, Any],
        state: State,
        spec: TaskSpec,
        code: str,
        message: str,
        now: int,
        fx: Effects,
        rng: random.Random,
        details: Any = None,
    ) -> None:
        task = doc["task"]
        attempt = task["attempt"]
        error = {"code": code, "message": message, "state": state.name, "attempt": attempt}
        if details is not None:
            error["details"] = details
        fx.lease = Lease() if fx.enqueue is None else fx.lease
        if spec.retry.retries(code, attempt):
            delay_ms = int(spec.retry.delay(attempt, rng.uniform(-1.0, 1.0)) * 1000)
            task["retry_at"] = now + delay_ms
            task["attempt"] = attempt + 1
            task["last_error"] = error
            doc["status"] = "retrying"
            self._event(
                doc,
                fx,
                now,
                "task_retry_scheduled",
                state=state.name,
                attempt=attempt + 1,
                delay_ms=delay_ms,
                error=error,
            )
            return
        trigger = (
            "timeout"
            if code in (TIMEOUT, DISPATCH_TIMEOUT) and state.target("timeout")
            else "failure"
        )
        target = state.target(trigger)
        if target is None:
            self._finish(doc, now, fx, "failed", error=error)
            return
        doc["steps"][state.name] = {"error": error}
        self._leave(doc, state, now, fx, trigger)
        self._enter(doc, target, now, fx, rng)

    def _lease_broken(
        self, task: dict[str, Any], lease: Lease, now: int, alive: dict[str, Any] | None
    ) -> str | None:
        if now >= lease.leased_at + task["run_ms"]:
            return "run"
        if alive is None:
            return "worker_lost"
        beat = int(alive.get("at", 0))
        if now - beat > task["heartbeat_ms"]:
            return "heartbeat"
        grace = 2 * task["lease_ms"]
        if beat > lease.leased_at + grace and task["id"] not in alive.get("tasks", [task["id"]]):
            return "worker_lost"
        return None

    def _cancel_task(self, doc: dict[str, Any], lease: Lease, fx: Effects) -> None:
        task = doc.get("task")
        if task is None:
            return
        if lease.tstate == "queued":
            fx.dequeue = (task["type"], member(doc["id"], task["id"]))
        elif lease.tstate == "leased":
            fx.cancel_on_worker = (lease.worker, task["id"])
        self._task_done(doc, task["id"])
        fx.lease = Lease()

    def _finish(
        self, doc: dict[str, Any], now: int, fx: Effects, status: str, error: dict[str, Any] | None
    ) -> None:
        doc["status"] = status
        doc["error"] = error
        doc["finished_at"] = now
        doc["task"] = None
        doc["wait_until"] = None
        fx.terminal = True
        fx.enqueue = None
        fx.lease = Lease()
        self._event(
            doc, fx, now, f"job_{status}", state=doc["state"], **({"error": error} if error else {})
        )


_TIMEOUT_TEXT = {
    "run": "the worker did not send a result within the run timeout",
    "heartbeat": "the worker holding the task stopped heartbeating",
    "worker_lost": "the worker holding the task is gone",
}


def _required(target: str | None) -> str:
    assert target is not None, "the compiler guarantees this transition"
    return target


def _parse_time(value: Any) -> int:
    if not isinstance(value, str):
        raise ExpressionError(f"wait.until gave {value!r}, not an ISO 8601 date-time")
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise ExpressionError(f"wait.until gave {value!r}, not an ISO 8601 date-time") from None
    if moment.tzinfo is None:
        raise ExpressionError(f"wait.until gave {value!r}, which has no timezone")
    return int(moment.timestamp() * 1000)
