"""Pause and resume: a paused job does not leave its current state.

Decides what pausing holds back and what it lets run. Tasks a worker holds run on and
their results are kept (a parallel state records each branch); tasks still queued go
back to the job as retries due at once, and nothing new is dispatched (a new branch, a
retry that falls due: each waits as a retry). Timers still fire: a wait that ends, an
approval or listen timeout, a decision or an event that arrives, a child job that ends,
a task that fails for good, each does what it does, except that the move to the next
state (or the end of the job) is kept in the pause book (`held`) and made on resume. The
job's own result_timeout waits for the resume too. Cancel ends a paused job as any other.
"""

from __future__ import annotations

from engine.runtime import tasks
from engine.runtime.jobdoc import JobStatus
from engine.runtime.step import Step


def pause(step: Step, by: str) -> None:
    """Pause the job: hold back its queued tasks; from now on it does not move."""
    doc = step.doc
    doc["paused"] = {"at": step.now, "by": by, "held": None}
    for task_id, task in list(doc["tasks"].items()):
        lease = step.fx.leases.get(task_id)
        if lease is None or lease.state != "queued":
            continue  # a worker holds it: it runs on, and its result is kept
        step.retire(task_id, answered=False)
        step.task_event("task_cancelled", task, reason="job paused")
        tasks.hold(step, task["state"], task["branch"], task["attempt"])
    step.event("job_paused", state=doc["state"], by=by)


def resume(step: Step, by: str) -> None:
    """Resume the job: make the move it held, or dispatch what it held back."""
    doc = step.doc
    book = doc["paused"]
    assert book is not None
    doc["paused"] = None
    step.event("job_resumed", state=doc["state"], by=by, paused_ms=step.now - book["at"])
    held = book["held"]
    if held is None:
        tasks.fire_retries(step)
    elif "end" in held:
        step.finish(JobStatus(held["end"]), held["error"])
    elif "enter" in held:  # admitted by its concurrency key meanwhile (concurrency.py)
        doc["status"] = JobStatus.PENDING
        step.enter(held["enter"])
    else:
        step.move(step.state(held["from"]), held["via"], held["to"])
