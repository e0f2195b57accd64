"""Redrive and rerun: an ended job runs again from one of its states.

Decides which ended jobs may run again and from where. A redrive takes a failed or
cancelled job back to the state that failed: the state it failed or was cancelled in, or,
for a job that followed a state's failure (or timeout) transition to an `end: failed`
state, that state. A rerun takes any ended job back to a state the client names. Either
keeps the job's history (a `job_redriven` event marks the new start) and its steps'
outputs (a state run again overwrites its own), may replace `initial_data` (the caller
checks it against the blueprint's input_schema), and runs on the blueprint version the
job is pinned to. What is reset: status, error, result, pending retries and books, the
transition count (`limits.max_transitions` counts anew), and a result_timeout, which
counts again from now. A subflow child never runs again on its own (its parent has moved
on: redrive the parent), and a job runs again at most MAX_REDRIVES times.
"""

from __future__ import annotations

from typing import Any

from engine.blueprint.model import Blueprint
from engine.runtime import concurrency
from engine.runtime.jobdoc import JobDoc, JobStatus
from engine.runtime.step import Step

MAX_REDRIVES = 100  # bounds a job's history however often it is redriven


def redrive_state(doc: JobDoc, blueprint: Blueprint) -> str | None:
    """Where a redrive of this failed or cancelled job starts; None when it ended in an
    `end: failed` state by its own flow (nothing failed that running again would fix)."""
    state = doc["state"]
    if state is None:  # it ended in its concurrency key's line: where it waited to go
        slot = doc.get("slot")
        return slot.get("left") if slot is not None else None
    if doc["status"] == JobStatus.CANCELLED:
        return state
    if blueprint.states[state].kind == "end":
        return doc.get("failed_state")
    return state


def merge_patch(target: Any, patch: Any) -> Any:
    """`target` with the JSON Merge Patch (RFC 7396) `patch` applied: keys of an object are
    replaced (merged if both are objects), and a null value removes its key."""
    if not isinstance(patch, dict):
        return patch
    merged = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = merge_patch(merged.get(key), value)
    return merged


def revive(
    step: Step, start: str, *, mode: str, by: str, initial_data: dict[str, Any] | None
) -> None:
    """Run the ended job again from `start`."""
    doc = step.doc
    before = doc["status"]
    code = (doc["error"] or {}).get("code")
    for task_id in list(doc["tasks"]):  # (an ended job has none; never keep one)
        step.retire(task_id, answered=False)
    doc["status"] = JobStatus.PENDING
    doc["error"] = None
    doc["result"] = None
    doc["finished_at"] = None
    doc["retries"] = []
    doc["parallel"] = doc["approval"] = doc["subflow"] = None
    doc["wait_until"] = None
    doc.pop("listen", None)
    doc.pop("paused", None)
    doc.pop("failed_state", None)
    if doc["deadline"] is not None:  # the result_timeout counts again from now
        doc["deadline"] = step.now + max(0, doc["deadline"] - doc["created_at"])
    doc["transitions"] = 0
    doc["redrives"] = doc.get("redrives", 0) + 1
    if initial_data is not None:
        doc["initial_data"] = initial_data
        step.fx.input_changed = True  # it is stored apart from the document, once
    step.fx.revived = True
    step.event(
        "job_redriven",
        state=start,
        mode=mode,
        by=by,
        previous_status=before,
        previous_error=code,
        initial_data_patched=initial_data is not None or None,
    )
    if step.bp.concurrency is not None:  # it takes a slot of its key again, in line
        concurrency.hold(step, start)
    else:
        step.enter(start)
