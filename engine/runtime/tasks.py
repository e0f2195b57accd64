"""Task bookkeeping inside a job document: dispatch, retry scheduling, lease checks."""

from __future__ import annotations

import random
from typing import TYPE_CHECKING, Any

from engine.blueprint.model import ParallelState, State, TaskSpec, TaskState
from engine.runtime import parallel
from engine.runtime.jobdoc import (
    DISPATCH_TIMEOUT,
    DONE_TASKS_KEPT,
    TIMEOUT,
    Effects,
    Enqueue,
    Leases,
    RuntimeSettings,
    TaskLease,
    member,
    queue_score,
)

if TYPE_CHECKING:
    from engine.runtime.machine import Machine


def dispatch(
    doc: dict[str, Any],
    fx: Effects,
    *,
    state: str,
    spec: TaskSpec,
    params: Any,
    attempt: int,
    now: int,
    settings: RuntimeSettings,
    branch: int | None = None,
) -> str:
    """Queue one task for `state` (or one branch of it); returns the new task id."""
    doc["seq"] += 1
    task_id = f"{doc['id']}-{doc['seq']}"
    dispatch_ms = doc.get("dispatch_timeout_ms")
    if dispatch_ms is None and spec.timeouts.dispatch is not None:
        dispatch_ms = int(spec.timeouts.dispatch * 1000)
    run_ms = int(spec.timeouts.run * 1000) if spec.timeouts.run else settings.default_run_timeout_ms
    heartbeat_ms = (
        int(spec.timeouts.heartbeat * 1000)
        if spec.timeouts.heartbeat
        else settings.heartbeat_timeout_ms
    )
    lease_ms = min(run_ms, heartbeat_ms)
    doc["tasks"][task_id] = {
        "id": task_id,
        "type": spec.task_type,
        "state": state,
        "branch": branch,
        "attempt": attempt,
        "queued_at": now,
        "dispatch_deadline": now + dispatch_ms if dispatch_ms else None,
        "run_ms": run_ms,
        "lease_ms": lease_ms,
        "heartbeat_ms": heartbeat_ms,
        "checked_at": None,
    }
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
    fx.enqueue.append(
        Enqueue(
            task_type=spec.task_type,
            task_id=task_id,
            member=member(doc["id"], task_id),
            score=queue_score(spec.priority, now),
            payload=payload,
            lease_ms=lease_ms,
        )
    )
    fx.event(
        now,
        "task_queued",
        state=state,
        task_id=task_id,
        task_type=spec.task_type,
        attempt=attempt,
        branch=branch,
    )
    return task_id


def retire(doc: dict[str, Any], fx: Effects, task_id: str) -> dict[str, Any]:
    """Remove an active task (result in, timed out, cancelled); returns its record.

    A queued task also leaves its queue; one queued by this very transition is simply
    not enqueued.
    """
    task: dict[str, Any] = doc["tasks"].pop(task_id)
    pending = [e for e in fx.enqueue if e.task_id == task_id]
    if pending:
        fx.enqueue.remove(pending[0])
    else:
        lease = fx.leases.get(task_id)
        if lease is not None and lease.state == "queued":
            fx.dequeue.append((task["type"], member(doc["id"], task_id)))
        fx.dropped.append(task_id)
    doc["done_tasks"] = [*doc["done_tasks"][-(DONE_TASKS_KEPT - 1) :], task_id]
    return task


def cancel_all(doc: dict[str, Any], fx: Effects, now: int, reason: str) -> None:
    """Retire every active task, telling workers to stop the ones they hold."""
    for task_id in list(doc["tasks"]):
        lease = fx.leases.get(task_id)
        task = retire(doc, fx, task_id)
        if lease is not None and lease.state == "leased":
            fx.cancel_on_worker.append((lease.worker, task_id))
        fx.event(
            now,
            "task_cancelled",
            state=task["state"],
            task_id=task_id,
            branch=task.get("branch"),
            reason=reason,
        )


def lease_problem(
    task: dict[str, Any], lease: TaskLease, now: int, alive: dict[str, Any] | None
) -> str | None:
    """Why a leased task must be taken back (run, heartbeat, worker_lost), or None."""
    if now >= lease.leased_at + task["run_ms"]:
        return "run"
    if alive is None:
        return "worker_lost"
    beat = int(alive.get("at", 0))
    if now - beat > task["heartbeat_ms"]:
        return "heartbeat"
    # A worker that heartbeats without listing the task lost it (e.g. the poll answer never
    # reached it); give it two lease periods to start reporting it.
    grace = 2 * task["lease_ms"]
    if (
        beat > lease.leased_at + grace
        and "tasks" in alive
        and task_id_of(task) not in alive["tasks"]
    ):
        return "worker_lost"
    return None


def task_id_of(task: dict[str, Any]) -> str:
    return str(task.get("id", ""))


def next_due(doc: dict[str, Any], leases: Leases) -> list[int]:
    """Deadlines of the job's active tasks and pending retries."""
    due: list[int] = [retry["at"] for retry in doc["retries"]]
    for task_id, task in doc["tasks"].items():
        lease = leases.get(task_id)
        if lease is None:
            continue
        elif lease.state == "queued":
            if task.get("dispatch_deadline") is not None:
                due.append(task["dispatch_deadline"])
        else:
            due.append(lease.leased_at + task["run_ms"])
            due.append(max(task.get("checked_at") or 0, lease.leased_at) + task["lease_ms"])
    return due


def spec_of(machine: Machine, task: dict[str, Any]) -> TaskSpec:
    return branch_spec(machine, machine.bp.states[task["state"]], task.get("branch"))


def branch_spec(machine: Machine, state: State, branch: int | None) -> TaskSpec:
    if isinstance(state, TaskState):
        assert state.spec is not None
        return state.spec
    assert isinstance(state, ParallelState)
    if state.item_spec is not None:
        return state.item_spec
    assert branch is not None
    return state.branches[branch][1]


def launch(
    machine: Machine,
    doc: dict[str, Any],
    fx: Effects,
    state_name: str,
    branch: int | None,
    attempt: int,
    now: int,
) -> None:
    """Dispatch the task of a task state, or one branch of a parallel state."""
    state = machine.bp.states[state_name]
    spec = branch_spec(machine, state, branch)
    context = machine.context(doc)
    if branch is not None:
        context.update(parallel.branch_context(machine, doc, branch))
    else:
        doc["status"] = "queued"
    dispatch(
        doc,
        fx,
        state=state_name,
        spec=spec,
        params=spec.params.render(context),
        attempt=attempt,
        now=now,
        settings=machine.settings,
        branch=branch,
    )


def task_failed(
    machine: Machine,
    doc: dict[str, Any],
    fx: Effects,
    task: dict[str, Any],
    code: str,
    message: str,
    now: int,
    rng: random.Random,
    details: Any = None,
) -> None:
    """A task attempt failed: retry it, or fail its branch or state."""
    spec = spec_of(machine, task)
    attempt = task["attempt"]
    error: dict[str, Any] = {
        "code": code,
        "message": message,
        "state": task["state"],
        "attempt": attempt,
    }
    if details is not None:
        error["details"] = details
    if spec.retry.retries(code, attempt):
        delay_ms = int(spec.retry.delay(attempt, rng.uniform(-1.0, 1.0)) * 1000)
        doc["retries"].append(
            {
                "state": task["state"],
                "branch": task.get("branch"),
                "attempt": attempt + 1,
                "at": now + delay_ms,
            }
        )
        if task.get("branch") is None:
            doc["status"] = "retrying"
        fx.event(
            now,
            "task_retry_scheduled",
            state=task["state"],
            branch=task.get("branch"),
            attempt=attempt + 1,
            delay_ms=delay_ms,
            error=error,
        )
        return
    if task.get("branch") is not None:
        parallel.branch_failed(machine, doc, fx, task, error, now, rng)
        return
    state = machine.bp.states[task["state"]]
    trigger = (
        "timeout" if code in (TIMEOUT, DISPATCH_TIMEOUT) and state.target("timeout") else "failure"
    )
    machine.state_failed(doc, fx, state, trigger, error, now, rng)


TIMEOUT_TEXT = {
    "run": "the worker did not send a result within the run timeout",
    "heartbeat": "the worker holding the task stopped heartbeating",
    "worker_lost": "the worker holding the task is gone",
}
