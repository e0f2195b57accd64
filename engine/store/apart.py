"""A job's active tasks, stored apart from its document.

Each active task's record is a job hash field `t:<task id>` and its lease (`TaskLease`) a
field `l:<task id>`; the document lists only which tasks are active (`active`: for a task
id `<job id>-<n>` the number n, any other id as it is; its lists of retired task ids,
`done_tasks` and `taken_back`, are stored so too). A change writes the fields of the
tasks it starts and deletes those of the tasks it ends: a branch result of a wide
`for_each` writes its own task, not every task in flight, and a lease writes one field.
A job written before keeps its tasks in the document (`tasks`) and its leases in one
field (`leases`) until its next change stores them apart.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

ACTIVE = "active"  # the document's list of active tasks, when they are stored apart
LEGACY_LEASES = "leases"  # the one field of every lease, in a job written before


def task_field(task_id: str) -> str:
    return f"t:{task_id}"


def lease_field(task_id: str) -> str:
    return f"l:{task_id}"


def active_list(job_id: str, task_ids: Iterable[str]) -> list[int | str]:
    """The document's `active` entry for these task ids."""
    prefix = f"{job_id}-"
    cut = len(prefix)
    return [int(t[cut:]) if t.startswith(prefix) and t[cut:].isdigit() else t for t in task_ids]


def active_ids(job_id: str, active: Iterable[Any]) -> list[str]:
    """The task ids an `active` entry lists."""
    return [f"{job_id}-{a}" if isinstance(a, int) else str(a) for a in active]


# Lists of task ids the document keeps, as stored (`blank`: see Orchestrator.commit).
ID_LISTS = ("done_tasks", "taken_back", "blank")


def fields_of(task_id: str) -> tuple[str, str, str]:
    """The job hash fields of a task: its payload, its record and its lease."""
    return f"p:{task_id}", task_field(task_id), lease_field(task_id)


def stored_doc(
    doc: Mapping[str, Any], apart: frozenset[str] = frozenset({"initial_data"})
) -> dict[str, Any]:
    """The document as stored: without its active tasks' records and the other keys stored
    `apart` (its initial_data, field `input`, ...), with its task id lists made short."""
    job_id = doc["id"]
    stored = {k: v for k, v in doc.items() if k not in apart and k != "tasks"}
    for name in ID_LISTS:
        if name in stored:
            stored[name] = active_list(job_id, stored[name])
    stored[ACTIVE] = active_list(job_id, doc["tasks"])
    return stored


def unpack(doc: dict[str, Any]) -> list[str] | None:
    """Turn a stored document back into one the rules read (its task id lists in full);
    returns the ids of its active tasks, or None for a document written before they were
    stored apart (it holds them itself)."""
    active = doc.pop(ACTIVE, None)
    if active is None:
        return None
    job_id = doc["id"]
    for name in ID_LISTS:
        if name in doc:
            doc[name] = active_ids(job_id, doc[name])
    return active_ids(job_id, active)
