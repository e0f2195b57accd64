"""What the API answers, as types: the JSON is kept as it comes (plain dicts and lists, so a
field the server adds later is there too), typed with TypedDicts for the fields it documents.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, NotRequired, TypedDict


class JobStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    RETRYING = "retrying"
    WAITING = "waiting"
    WAITING_FOR_HUMAN = "waiting_for_human"
    FINISHED = "finished"
    FAILED = "failed"
    CANCELLED = "cancelled"


TERMINAL = frozenset({JobStatus.FINISHED, JobStatus.FAILED, JobStatus.CANCELLED})


class JobError(TypedDict):
    code: str
    message: str
    state: NotRequired[str]
    attempt: NotRequired[int]
    details: NotRequired[Any]


class Progress(TypedDict):
    """The last progress event of the worker holding a task (`ctx.progress(0.4, "...")`)."""

    at: str
    state: str
    task_id: str
    progress: NotRequired[float]
    message: NotRequired[str]


class Task(TypedDict):
    type: str | None
    state: str
    attempt: int
    status: str  # queued, leased or retrying
    id: NotRequired[str]
    worker: NotRequired[str]
    leased_at: NotRequired[str]
    retry_at: NotRequired[str]
    branch: NotRequired[int]


class Approval(TypedDict):
    state: str
    decisions: list[str]
    message: str | None
    asked_at: str | None
    timeout_at: str | None
    link: NotRequired[str]


class JobSummary(TypedDict):
    """A job in a listing (`GET /api/v1/jobs`); the full view is one `get` away."""

    id: str
    blueprint: str
    version: int
    status: str
    state: str | None
    created_at: str
    updated_at: str
    finished_at: str | None
    labels: NotRequired[dict[str, str]]
    error: NotRequired[JobError]


class Job(JobSummary):
    """`GET /api/v1/jobs/{id}`: a job as its owner sees it."""

    tasks: NotRequired[list[Task]]
    task: NotRequired[Task]
    progress: NotRequired[Progress]
    approval: NotRequired[Approval]
    wait_until: NotRequired[str]
    subflow: NotRequired[dict[str, Any]]
    parallel: NotRequired[dict[str, Any]]
    parent_job_id: NotRequired[str]
    initial_data: NotRequired[dict[str, Any]]
    result: NotRequired[Any]


class Page(TypedDict):
    jobs: list[JobSummary]
    next_cursor: str | None


class Event(TypedDict):
    """A history entry: `timestamp`, `event` (job_created, state_entered, task_result, ...)
    and the fields of that event (`state`, `worker`, `attempt`, `duration_ms`, `error`...)."""

    timestamp: str
    event: str


class Change(TypedDict):
    """`GET /api/v1/jobs/{id}/changes`: the job's change token and status."""

    job_id: str
    change: str
    status: str


class Explanation(TypedDict):
    """`GET /api/v1/jobs/{id}/explain`: why the job is where it is."""

    job_id: str
    status: str
    state: str | None
    sentence: str
    facts: dict[str, Any]


class SubmitOptions(TypedDict, total=False):
    """The optional arguments of `submit`.

    - `labels`: names and values to tag the job with;
    - `idempotency_key`: repeating a submission with the same key makes no second job;
    - `job_id`: the job's id, chosen by the client (repeating the same submission with it
      makes no second job; not with `idempotency_key`);
    - `webhook_url`: where the server POSTs the job when it ends;
    - `dispatch_timeout`, `result_timeout`: durations ("30s", "5m", or seconds)."""

    labels: Mapping[str, str]
    idempotency_key: str
    job_id: str
    webhook_url: str
    dispatch_timeout: str | float
    result_timeout: str | float


@dataclass(frozen=True)
class Submitted:
    """A submission's answer: the job's id, and whether this request created it (False when
    an `idempotency_key` found the job an earlier identical request made)."""

    job_id: str
    created: bool
