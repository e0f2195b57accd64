"""The job document and the values the transition rules exchange with the orchestrator.

A job is a JSON document (`new_job`) plus, in Redis, one lease entry per active task
(`TaskLease`), kept apart so that Lua can lease a task without parsing the document.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any

from engine.blueprint.model import Blueprint

TERMINAL = frozenset({"finished", "failed", "cancelled"})
DONE_TASKS_KEPT = 64

# Error codes the engine itself produces.
TIMEOUT = "TIMEOUT"  # run or heartbeat timeout, worker lost
DISPATCH_TIMEOUT = "DISPATCH_TIMEOUT"  # no worker took the task in time
JOB_TIMEOUT = "JOB_TIMEOUT"  # the job's result_timeout passed
INVALID_OUTPUT = "INVALID_OUTPUT"  # a result broke the state's output_schema
UNDECLARED_STATUS = "UNDECLARED_STATUS"  # a worker status the state has no transition for
NO_CHOICE_MATCHED = "NO_CHOICE_MATCHED"
EXPRESSION_ERROR = "EXPRESSION_ERROR"
MAX_TRANSITIONS = "MAX_TRANSITIONS"
BRANCH_CANCELLED = "BRANCH_CANCELLED"  # a sibling branch failed first (fail_fast)
SUBFLOW_DEPTH = "SUBFLOW_DEPTH"  # subflows nested deeper than allowed
APPROVAL_TIMEOUT = "APPROVAL_TIMEOUT"


@dataclass(frozen=True, slots=True)
class RuntimeSettings:
    default_run_timeout_ms: int = 3_600_000
    heartbeat_timeout_ms: int = 60_000  # a leased task's worker must heartbeat this often
    max_transitions: int = 1000
    retention_ms: int = 7 * 86_400_000  # finished jobs are kept this long
    max_subflow_depth: int = 8
    subflow_check_ms: int = 5_000  # how often a parent looks at its child (crash recovery)


@dataclass(frozen=True, slots=True)
class TaskLease:
    """A task's dispatch state as Lua keeps it: queued, or leased to a worker."""

    state: str  # "queued" or "leased"
    lease_ms: int = 0
    worker: str = ""
    leased_at: int = 0

    def encode(self) -> str:
        if self.state == "queued":
            return f"q|{self.lease_ms}"
        return f"l|{self.lease_ms}|{self.worker}|{self.leased_at}"

    @classmethod
    def decode(cls, raw: str) -> TaskLease:
        return _decode_lease(raw)

    @classmethod
    def _decode(cls, raw: str) -> TaskLease:
        parts = raw.split("|")
        if parts[0] == "q":
            return cls("queued", int(parts[1]))
        return cls("leased", int(parts[1]), parts[2], int(parts[3]))


# A job's leases are decoded on every change of it, the same strings again and again (a
# 1,000-branch job: a million times): remember the recent ones (TaskLease is immutable).
_decode_lease = functools.lru_cache(maxsize=16_384)(TaskLease._decode)

Leases = dict[str, TaskLease]


@dataclass(frozen=True, slots=True)
class Enqueue:
    task_type: str
    task_id: str
    member: str
    score: float
    payload: dict[str, Any]
    lease_ms: int


@dataclass(frozen=True, slots=True)
class ChildJob:
    """A subflow child to create once the parent's commit has landed."""

    job_id: str
    blueprint: str
    initial_data: Any
    parent: dict[str, Any]


@dataclass(slots=True)
class Effects:
    """What a transition asks the store to do besides writing the new document."""

    leases: Leases = field(default_factory=dict)  # as read, for the rules to consult
    history: list[dict[str, Any]] = field(default_factory=list)
    enqueue: list[Enqueue] = field(default_factory=list)
    dequeue: list[tuple[str, str]] = field(default_factory=list)  # (task type, member)
    dropped: list[str] = field(default_factory=list)  # task ids no longer active
    cancel_on_worker: list[tuple[str, str]] = field(default_factory=list)  # (worker, task id)
    children: list[ChildJob] = field(default_factory=list)
    cancel_children: list[str] = field(default_factory=list)
    notify_parent: bool = False
    terminal: bool = False

    def event(self, now: int, event: str, **data: Any) -> None:
        self.history.append(
            {"at": now, "event": event, **{k: v for k, v in data.items() if v is not None}}
        )


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
    parent: dict[str, Any] | None = None,
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
        "tasks": {},
        "retries": [],
        "parallel": None,
        "approval": None,
        "subflow": None,
        "wait_until": None,
        "deadline": now + result_timeout_ms if result_timeout_ms else None,
        "dispatch_timeout_ms": dispatch_timeout_ms,
        "webhook_url": webhook_url,
        "parent": parent,
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
