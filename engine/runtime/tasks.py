"""Tasks: what happens to work handed to a worker, for task states and parallel branches.

Decides: how a task is dispatched (its timeouts and payload), what a worker's answer does
(success, a custom status, failure, an output that breaks `output_schema`), when a failed
attempt is retried and after how long, and when a queued or leased task has waited too
long. What a *final* outcome means is the state kind's: `TaskKind` below for task states,
`engine/runtime/parallel.py` for branches.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from engine.blueprint.model import State, TaskSpec, TaskState
from engine.errors import ExpressionError
from engine.runtime.jobdoc import (
    DISPATCH_TIMEOUT,
    INVALID_OUTPUT,
    TIMEOUT,
    UNDECLARED_STATUS,
    Enqueue,
    JobDoc,
    JobStatus,
    Leases,
    RuntimeSettings,
    TaskLease,
    TaskRecord,
    member,
    queue_score,
)
from engine.runtime.step import Kind, Next, Step

# A heartbeat recorded this long after a lease that does not list the task means the worker
# never received it (see `receipt_margin`).
RECEIPT_MARGIN_MS = 5_000

TIMEOUT_TEXT = {
    "run": "the worker did not send a result within the run timeout",
    "heartbeat": "the worker holding the task stopped heartbeating",
    "worker_lost": "the worker holding the task is gone",
}


class TaskKind(Kind[TaskState]):
    """A task state: one task at a time; its status picks the transition."""

    def enter(self, step: Step, state: TaskState) -> Next | None:
        launch(step, state, None, 1)
        return None

    def task_succeeded(
        self, step: Step, state: TaskState, task: TaskRecord, status: str, data: Any
    ) -> None:
        # (`error:<CODE>` catches a failure: it is no status a worker may answer with.)
        target = None if status.startswith("error:") else state.target(status)
        if target is None:
            message = f"state {state.name!r} has no transition for status {status!r}"
            failed(step, task, UNDECLARED_STATUS, message)
            return
        step.record(state.name, data)
        step.move(state, status, target)

    def gave_up(
        self, step: Step, state: TaskState, task: TaskRecord, error: dict[str, Any], trigger: str
    ) -> None:
        step.fail_state(state, trigger, error)


# -- dispatch ----------------------------------------------------------------------------------


def spec_of(step: Step, task: TaskRecord) -> TaskSpec:
    spec = step.state(task["state"]).task_spec(task["branch"])
    assert spec is not None, "a task exists only for a state that dispatches one"
    return spec


def launch(step: Step, state: State, branch: int | None, attempt: int) -> None:
    """Dispatch the task of a task state, or of one branch of a parallel state; while the
    job is paused, keep it as a retry due at once (dispatched on resume)."""
    if step.paused:
        hold(step, state.name, branch, attempt)
        return
    if step.ended:  # an earlier branch's params failed the job: launch nothing more
        return
    spec = state.task_spec(branch)
    if spec is None:  # a branch that runs a subflow (held while paused, like a task)
        assert branch is not None, "only a parallel state's branch runs no task"
        step.rules(state).start_child(step, state, branch)
        return
    context = step.context(**step.rules(state).task_context(step, state, branch))
    try:
        # Rendered for each attempt (a retry, a later branch), not only on entering.
        params = spec.params.render(context)
    except ExpressionError as exc:
        step.expression_failed(state.name, exc)
        return
    if branch is None:
        step.doc["status"] = JobStatus.QUEUED
    dispatch(step, state.name, spec, params, attempt, branch)


def hold(step: Step, state: str, branch: int | None, attempt: int) -> None:
    """Keep a task that a paused job would dispatch now for its resume."""
    step.doc["retries"].append(
        {"state": state, "branch": branch, "attempt": attempt, "at": step.now}
    )
    step.event("task_held", state=state, branch=branch, attempt=attempt)


def dispatch(
    step: Step, state: str, spec: TaskSpec, params: Any, attempt: int, branch: int | None
) -> str:
    """Queue one task for `state` (or one branch of it); returns the new task id."""
    doc, now = step.doc, step.now
    doc["seq"] += 1
    task_id = f"{doc['id']}-{doc['seq']}"
    run_ms, heartbeat_ms, dispatch_ms = _timeouts(doc, spec, step.settings)
    task: TaskRecord = {
        "id": task_id,
        "type": spec.task_type,
        "state": state,
        "branch": branch,
        "attempt": attempt,
        "queued_at": now,
        "dispatch_deadline": now + dispatch_ms if dispatch_ms else None,
        "run_ms": run_ms,
        "lease_ms": min(run_ms, heartbeat_ms),
        "heartbeat_ms": heartbeat_ms,
        "checked_at": None,
    }
    doc["tasks"][task_id] = task
    metadata: dict[str, Any] = {"state": state, "attempt": attempt, "blueprint": doc["blueprint"]}
    if branch is not None:
        metadata["branch"] = branch
    payload = {
        "job_id": doc["id"],
        "task_id": task_id,
        "type": spec.task_type,
        "params": params if isinstance(params, dict) else {"value": params},
        "priority": spec.priority,
        "tracing_context": {},
        "metadata": metadata,
    }
    step.fx.enqueue.append(
        Enqueue(
            task_type=spec.task_type,
            task_id=task_id,
            member=member(doc["id"], task_id),
            score=queue_score(spec.priority, now),
            payload=payload,
            # The timer's first look once it is leased (see `next_look`).
            lease_ms=min(task["lease_ms"], receipt_margin(task)),
        )
    )
    step.task_event("task_queued", task, task_type=spec.task_type)
    return task_id


def _timeouts(
    doc: JobDoc, spec: TaskSpec, settings: RuntimeSettings
) -> tuple[int, int, int | None]:
    """(run, heartbeat, dispatch) timeouts in ms; the submitter's dispatch timeout wins."""
    timeouts = spec.timeouts
    run_ms = int(timeouts.run * 1000) if timeouts.run else settings.default_run_timeout_ms
    heartbeat_ms = (
        int(timeouts.heartbeat * 1000) if timeouts.heartbeat else settings.heartbeat_timeout_ms
    )
    dispatch_ms = doc["dispatch_timeout_ms"]
    if dispatch_ms is None and timeouts.dispatch is not None:
        dispatch_ms = int(timeouts.dispatch * 1000)
    return run_ms, heartbeat_ms, dispatch_ms


# -- answers -----------------------------------------------------------------------------------


# A result's output_schema check done ahead (off the event loop, for a large result): the
# schema checked and what it found (`output_problems`).
Checked = tuple[Any, list[str]]


def output_problems(schema: Any, data: Any) -> list[str]:
    """How `data` breaks `schema` (a compiled output_schema), the first 20 by path."""
    problems = sorted(schema.iter_errors(data), key=lambda e: list(e.path))
    return [f"{e.json_path}: {e.message}" for e in problems[:20]]


def answered(
    step: Step,
    task: TaskRecord,
    status: str,
    data: Any,
    error: Any,
    checked: Checked | None = None,
) -> None:
    """A worker's answer for a task already retired from the job. `checked`: the
    output_schema check of `data`, if it was done ahead (used if of the same schema)."""
    if status == "failure":
        given: dict[str, Any] = error if isinstance(error, dict) else {}
        code = str(given.get("code") or "TRANSIENT_ERROR")
        failed(step, task, code, str(given.get("message", "")), given.get("details"))
        return
    if status == "cancelled":
        failed(step, task, "TRANSIENT_ERROR", "the worker cancelled the task")
        return
    spec = spec_of(step, task)
    if status == "success" and spec.output_schema is not None:
        if checked is not None and checked[0] is spec.output_schema:
            details = checked[1]
        else:
            details = output_problems(spec.output_schema, data)
        if details:
            message = "the result does not match the state's output_schema"
            failed(step, task, INVALID_OUTPUT, message, details)
            return
    state = step.state(task["state"])
    step.rules(state).task_succeeded(step, state, task, status, data)


def failed(step: Step, task: TaskRecord, code: str, message: str, details: Any = None) -> None:
    """A task attempt failed: retry it, or hand the final failure to its state's kind."""
    attempt = task["attempt"]
    error: dict[str, Any] = {"code": code, "message": message, "state": task["state"]}
    error["attempt"] = attempt
    if details is not None:
        error["details"] = details
    retry = spec_of(step, task).retry
    if retry.retries(code, attempt):
        delay_ms = int(retry.delay(attempt, step.rng.uniform(-1.0, 1.0)) * 1000)
        step.doc["retries"].append(
            {
                "state": task["state"],
                "branch": task["branch"],
                "attempt": attempt + 1,
                "at": step.now + delay_ms,
            }
        )
        if task["branch"] is None:
            step.doc["status"] = JobStatus.RETRYING
        step.event(
            "task_retry_scheduled",
            state=task["state"],
            branch=task["branch"],
            attempt=attempt + 1,
            delay_ms=delay_ms,
            error=error,
        )
        return
    state = step.state(task["state"])
    timed_out = code in (TIMEOUT, DISPATCH_TIMEOUT) and state.target("timeout") is not None
    step.rules(state).gave_up(step, state, task, error, "timeout" if timed_out else "failure")


# -- timers ------------------------------------------------------------------------------------


def fire_retries(step: Step) -> None:
    """Dispatch again every failed attempt whose delay has passed (none while paused)."""
    doc = step.doc
    if step.paused:
        return
    for retry in [r for r in doc["retries"] if step.now >= r["at"]]:
        doc["retries"].remove(retry)
        launch(step, step.state(retry["state"]), retry["branch"], retry["attempt"])


def check_leases(step: Step, alive: dict[str, dict[str, Any] | None], heard_since: int) -> None:
    """Take back tasks that waited too long for a worker, or whose worker went quiet.

    `alive` maps the workers holding this job's tasks to their last heartbeat (None when
    gone); `heard_since` is when the deployment could hear workers again (see
    `lease_problem`)."""
    for task_id, task in list(step.doc["tasks"].items()):
        lease = step.fx.leases.get(task_id)
        if lease is None or step.ended or task_id not in step.doc["tasks"]:
            continue
        if lease.state == "queued":
            deadline = task["dispatch_deadline"]
            if deadline is not None and step.now >= deadline:
                step.retire(task_id, answered=False)
                step.task_event("task_timeout", task, timeout="dispatch")
                failed(
                    step,
                    task,
                    DISPATCH_TIMEOUT,
                    "no worker took the task within its dispatch timeout",
                )
            continue
        heard = alive.get(lease.worker)
        reason = lease_problem(task, lease, step.now, heard, heard_since)
        if reason == "unreceived":
            # The poll's answer never reached the worker: the task never ran there. Queue it
            # again at once as the same attempt, as when a poll's connection is gone (and
            # tell the worker to drop it, should it hold it after all).
            step.retire(task_id, answered=False)
            step.fx.cancel_on_worker.append((lease.worker, task_id))
            step.task_event("task_released", task, worker=lease.worker, reason=reason)
            launch(step, step.state(task["state"]), task["branch"], task["attempt"])
            continue
        if reason is None:
            # (A changed record is a new one: the one read may be shared, see JobRecord.)
            if heard is not None and task_id in heard.get("tasks", ()) and not task.get("listed"):
                task = step.doc["tasks"][task_id] = {**task, "listed": True}
                # the worker has it: back to one look a lease period
            if step.now >= next_look(task, lease):
                step.doc["tasks"][task_id] = {**task, "checked_at": step.now}
            continue
        step.retire(task_id, answered=False)
        step.fx.history.append(picked_up(task, lease))  # the lost attempt did start
        step.fx.cancel_on_worker.append((lease.worker, task_id))
        step.task_event("task_timeout", task, worker=lease.worker, timeout=reason)
        failed(step, task, TIMEOUT, TIMEOUT_TEXT[reason])


def picked_up(task: TaskRecord, lease: TaskLease) -> dict[str, Any]:
    """The history event of a task's lease, stamped with the lease's time. It is written
    with the attempt's end (result or timeout); while the task runs, history shows it from
    the lease (`Orchestrator.history`)."""
    event = {"at": lease.leased_at, "event": "task_picked_up", "state": task["state"]}
    event.update(task_id=task["id"], worker=lease.worker, attempt=task["attempt"])
    if task["branch"] is not None:
        event["branch"] = task["branch"]
    event["waited_ms"] = max(0, lease.leased_at - task["queued_at"])
    return event


def lease_problem(
    task: TaskRecord,
    lease: TaskLease,
    now: int,
    alive: dict[str, Any] | None,
    heard_since: int = 0,
) -> str | None:
    """Why a leased task must be taken back (run, heartbeat, worker_lost), "unreceived" when
    the worker never got it (queued again as the same attempt), or None.

    A worker's silence counts only from `heard_since`: while no orchestrator (or no Redis)
    was up, its heartbeats had nowhere to go, and its heartbeat record may have expired.
    It gets one heartbeat period after the deployment can hear it again; a task whose
    result waits for the outage to end is not declared lost (the run timeout still holds).
    """
    if now >= lease.leased_at + task["run_ms"]:
        return "run"
    if alive is None:
        return "worker_lost" if now - heard_since > task["heartbeat_ms"] else None
    beat = int(alive.get("at", 0))
    if now - max(beat, heard_since) > task["heartbeat_ms"]:
        return "heartbeat"
    if "tasks" not in alive or task["id"] in alive["tasks"]:
        return None
    if not task.get("listed"):
        # Never listed: a heartbeat recorded `receipt_margin` after the lease left the
        # worker after the poll's answer would have reached it, so the answer was lost (an
        # orchestrator killed before it was sent, a proxy that dropped it).
        return "unreceived" if beat >= lease.leased_at + receipt_margin(task) else None
    # Listed, then no longer (a restarted worker, a result lost on its way): give the worker
    # two lease periods to report it again or send its result.
    return "worker_lost" if beat > lease.leased_at + 2 * task["lease_ms"] else None


def receipt_margin(task: TaskRecord) -> int:
    """How much later than the lease a heartbeat must be recorded for the lack of the task
    in it to mean the worker never got it: time for the poll's answer to arrive, for the
    heartbeat to travel, and for the clocks of two orchestrators to disagree."""
    return min(RECEIPT_MARGIN_MS, 2 * task["lease_ms"])


def next_look(task: TaskRecord, lease: TaskLease) -> int:
    """When the timer looks at a leased task next: every `receipt_margin` until a heartbeat
    lists it (a lost poll answer is noticed within a heartbeat or two), then every lease
    period."""
    period = task["lease_ms"] if task.get("listed") else receipt_margin(task)
    return max(task["checked_at"] or 0, lease.leased_at) + period


def next_due(doc: JobDoc, leases: Leases, only: Iterable[str] | None = None) -> list[int]:
    """Deadlines of the job's active tasks (of the tasks `only`, if given) and pending
    retries (held while paused)."""
    paused = doc.get("paused") is not None
    due: list[int] = [] if paused else [retry["at"] for retry in doc["retries"]]
    active = doc["tasks"]
    for task_id in active if only is None else only:
        lease = leases.get(task_id)
        task = active.get(task_id)
        if lease is None or task is None:
            continue
        if lease.state == "queued":
            if task["dispatch_deadline"] is not None:
                due.append(task["dispatch_deadline"])
        else:
            due.append(lease.leased_at + task["run_ms"])
            due.append(next_look(task, lease))
    return due
