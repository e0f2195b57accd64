"""Task bookkeeping inside a job document: dispatch, retry scheduling, lease checks."""

from __future__ import annotations

from typing import Any

from engine.blueprint.model import TaskSpec
from engine.runtime.jobdoc import (
    DONE_TASKS_KEPT,
    Effects,
    Enqueue,
    Leases,
    RuntimeSettings,
    TaskLease,
    member,
    queue_score,
)


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


TIMEOUT_TEXT = {
    "run": "the worker did not send a result within the run timeout",
    "heartbeat": "the worker holding the task stopped heartbeating",
    "worker_lost": "the worker holding the task is gone",
}
