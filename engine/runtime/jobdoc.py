"""The job document and the values the transition rules exchange with the orchestrator.

A job is a JSON document (`JobDoc`, made by `new_job`) plus, in Redis, one lease entry per
active task (`TaskLease`), kept apart so that Lua can lease a task without parsing the
document. The document's parts are TypedDicts: they cost nothing at run time (the document
is the dict that JSON decoding gives) and let mypy check every field the rules touch.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, NotRequired, TypedDict

from engine.blueprint.model import Blueprint


class JobStatus(StrEnum):
    """Where a job stands, as clients see it (`GET /api/v1/jobs/{id}` `status`)."""

    PENDING = "pending"  # created, its first state not entered yet
    QUEUED = "queued"  # its task waits for a worker (a view shows `running` once leased)
    RUNNING = "running"  # a parallel state's branches run
    RETRYING = "retrying"  # its task failed and waits to be tried again
    WAITING = "waiting"  # in a wait state, or for a subflow child
    WAITING_FOR_HUMAN = "waiting_for_human"  # an approval state waits for a decision
    # Shown while a client has paused the job (`JobDoc.paused`); the document keeps the
    # status underneath, which the job has again once resumed. Never stored as `status`.
    PAUSED = "paused"
    FINISHED = "finished"
    FAILED = "failed"
    CANCELLED = "cancelled"


TERMINAL = frozenset({JobStatus.FINISHED, JobStatus.FAILED, JobStatus.CANCELLED})
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
RACE_LOST = "RACE_LOST"  # a sibling branch won the race (compete) first
EMPTY_RACE = "EMPTY_RACE"  # a race (compete) over an empty for_each list: nobody can win
SUBFLOW_DEPTH = "SUBFLOW_DEPTH"  # subflows nested deeper than allowed
APPROVAL_TIMEOUT = "APPROVAL_TIMEOUT"


# -- the job document ----------------------------------------------------------------------
# Times are epoch milliseconds throughout.


class TaskRecord(TypedDict):
    """An active task: dispatched, not yet answered, timed out or cancelled."""

    id: str  # `<job id>-<seq>`, unique within the job
    type: str  # the task type a worker serves
    state: str  # the task state, or the parallel state it is a branch of
    branch: int | None  # the branch index inside a parallel state; None for a task state
    attempt: int  # 1 for the first try, 2 for the first retry, ...
    queued_at: int
    dispatch_deadline: int | None  # fails with DISPATCH_TIMEOUT if still queued then
    run_ms: int  # the run timeout, counted from the lease
    heartbeat_ms: int  # the holder's heartbeat may not be older than this
    lease_ms: int  # how often the timer looks at the lease: min(run_ms, heartbeat_ms)
    checked_at: int | None  # when the timer last found the lease healthy (see tasks.next_look)
    listed: NotRequired[bool]  # a heartbeat of the worker holding it has listed it


class RetryRecord(TypedDict):
    """A failed task attempt waiting to be dispatched again."""

    state: str
    branch: int | None
    attempt: int  # the attempt number the retry will have
    at: int  # when to dispatch it


class ParallelBook(TypedDict):
    """A parallel state in progress: counters only, whatever its width. A `for_each`'s items
    and every branch's result are stored apart from the document, one job hash field each
    (`BranchData`), so that a branch result writes its own result and not all of them."""

    state: str
    run: int  # which entry of the state this is (the job's `transitions` when it entered)
    count: int  # branches in all
    names: list[str] | None  # static branches: their names in order; None for for_each
    next: int  # the index of the next branch to launch
    running: int  # branches launched and not yet settled
    done: int  # branches settled (succeeded, or failed under `collect` or in a race)
    failed: int  # of those, how many failed
    # Subflow branches whose child job runs, by branch index (as a string: a JSON key).
    # Absent until the first one starts; never more than the branches running.
    children: NotRequired[dict[str, BranchChild]]


class BranchChild(TypedDict):
    """A subflow branch's child job, while it runs."""

    child_id: str
    input: Any  # the child's initial_data (kept to re-create the child after a crash)
    check_at: int  # when to look at the child again (recovers a lost `done` notification)


class ApprovalBook(TypedDict):
    """An approval state waiting for a person."""

    state: str
    decisions: list[str]
    message: Any  # the rendered message template, if any
    token: str  # the single-use approval link's secret
    timeout_at: int | None
    asked_at: int


class ListenBook(TypedDict):
    """A listen state waiting for an event sent through the API."""

    state: str
    event: str  # the event's name
    since: int
    timeout_at: int | None


class PauseBook(TypedDict):
    """A job a client paused: it leaves its state only once resumed."""

    at: int
    by: str
    # The move the job would have made meanwhile, made on resume: {"from", "via", "to"},
    # or {"end": status, "error": ...} to end the job; None while nothing has fallen due.
    held: dict[str, Any] | None


class SubflowBook(TypedDict):
    """A subflow state waiting for its child job."""

    state: str
    child_id: str
    input: Any  # the child's initial_data (kept to re-create the child after a crash)
    check_at: int  # when to look at the child again (recovers a lost `done` notification)


class SlotBook(TypedDict):
    """A job of a blueprint with `concurrency`: its key and where it stands there (see
    engine/runtime/concurrency.py)."""

    key: str  # the key's value
    tag: str  # the hash tag of the key's state
    limit: int
    round: int  # 1, and one more with each redrive or rerun
    enter: str | None  # the state to enter once admitted; None once it was
    since: int  # when it joined the line (ms)
    check_at: int  # its periodic check while it waits, or while its release is owed
    n: int | None  # its admission number at the key, once admitted
    owed: bool  # it ended and its slot may still be held: release it
    # The state it waited to enter when it ended still in line (cancelled, timed out): where
    # a redrive starts it.
    left: NotRequired[str]


class ParentRef(TypedDict):
    """Set on a subflow child: whom to resume when it ends."""

    job_id: str
    state: str
    depth: int  # 1 for a child of a top-level job
    branch: NotRequired[int]  # the parallel state's branch the child runs, if it runs one


class JobDoc(TypedDict):
    """A job as stored: everything the rules need to decide its next step."""

    id: str
    blueprint: str
    version: int
    hash: str  # the content hash of the compiled blueprint the job is pinned to
    client: str  # the client that submitted it: only it may see the job
    status: JobStatus
    state: str | None  # the current state; None before the first is entered
    created_at: int
    updated_at: int
    finished_at: int | None
    initial_data: Any
    state_history: dict[str, Any]  # every state's dict output merged in order
    steps: dict[str, Any]  # each state's last output (`steps.<state>` in expressions)
    transitions: int  # states entered so far; limits.max_transitions caps it
    tasks: dict[str, TaskRecord]  # active tasks by id
    retries: list[RetryRecord]
    parallel: ParallelBook | None
    approval: ApprovalBook | None
    subflow: SubflowBook | None
    wait_until: int | None  # a wait state's end
    deadline: int | None  # the job's result_timeout: it fails with JOB_TIMEOUT then
    dispatch_timeout_ms: int | None  # the submitter's dispatch timeout, for every task
    webhook_url: str | None
    parent: ParentRef | None
    result: Any
    error: dict[str, Any] | None
    seq: int  # task ids issued so far (the last task's id ends in `-<seq>`)
    hseq: int  # history entries written so far (the next one is number hseq)
    done_tasks: list[str]  # the last DONE_TASKS_KEPT retired task ids: tells duplicates apart
    # Of those, the ones taken back unanswered (timed out, released, cancelled): a late
    # result for one is answered `superseded`. Absent in documents written before it.
    taken_back: NotRequired[list[str]]
    # Ended tasks whose fields were blanked, not yet deleted (see Orchestrator.commit).
    blank: NotRequired[list[str]]
    # Set on a job created with an Idempotency-Key: what identifies its request (endpoint
    # and body), so that a retry is told apart from another request with the same key.
    request_fingerprint: NotRequired[str]
    # When the job entered its current state (ms), written by the metrics observer
    # (engine/runtime/observe.py) for the state-duration histogram.
    state_since: NotRequired[int]
    # A listen state's wait (engine/runtime/events.py); absent in documents written before.
    listen: NotRequired[ListenBook | None]
    # Set while a client has the job paused (engine/runtime/pausing.py).
    paused: NotRequired[PauseBook | None]
    # The state whose failure the job followed last (Step.fail_state): where a redrive of a
    # job that ended in an `end: failed` state starts again.
    failed_state: NotRequired[str]
    # How many times the job was redriven or rerun (engine/runtime/redrive.py).
    redrives: NotRequired[int]
    # The last progress event the worker holding a task sent: `at`, `state`, `task_id`, then
    # whatever fields the worker sent (`progress`, `message`, ...).
    progress: NotRequired[dict[str, Any]]
    # The labels the job was submitted with (name -> value), indexed for search; absent
    # when it had none.
    labels: NotRequired[dict[str, str]]
    # Set on a job of a blueprint with `concurrency` (engine/runtime/concurrency.py).
    slot: NotRequired[SlotBook]
    # Where `steps` and `state_history` are stored (engine/runtime/outputs.py): the output
    # field number of each state's output, those merged into state_history in order, and
    # the next number. Absent in documents written before outputs were stored apart.
    outs: NotRequired[dict[str, int]]
    layers: NotRequired[list[int]]
    oseq: NotRequired[int]


def visible_status(doc: Mapping[str, Any]) -> JobStatus:
    """The status clients see: `paused` while a client has the job paused."""
    status = JobStatus(doc["status"])
    if doc.get("paused") is not None and status not in TERMINAL:
        return JobStatus.PAUSED
    return status


@dataclass(frozen=True, slots=True)
class RuntimeSettings:
    default_run_timeout_ms: int = 3_600_000
    heartbeat_timeout_ms: int = 60_000  # a leased task's worker must heartbeat this often
    max_transitions: int = 1000
    retention_ms: int = 7 * 86_400_000  # finished jobs are kept this long
    max_subflow_depth: int = 8
    subflow_check_ms: int = 5_000  # how often a parent looks at its child (crash recovery)
    # How often a job waiting for a concurrency slot, or owing one back, checks its key
    # (crash recovery, see engine/runtime/concurrency.py).
    slot_check_ms: int = 10_000


@dataclass(slots=True)
class BranchData:
    """What a rule was given of a parallel state's branch state stored outside the document:
    `for_each` items by index, and the results of the settled branches. The orchestrator
    reads what a rule asks for (`NeedBranchData`) and decides again."""

    run: int | None = None  # the ParallelBook `run` the data belongs to
    items: dict[int, Any] = field(default_factory=dict)  # the items read so far
    results: dict[int, Any] | None = None  # every stored result (None: not read)
    version: int = -1  # the job version the results were read at


class NeedBranchData(Exception):
    """Raised by a rule that needs stored branch data it was not given (an item to launch a
    branch with, or every result to join). Nothing of the attempt counts: the caller reads
    the data and applies the rule again to the job as it was."""

    def __init__(self, items: list[int], results: bool) -> None:
        super().__init__(f"branch items {items[:5]} and results {results} needed")
        self.items = items
        self.results = results


@dataclass(frozen=True, slots=True)
class TaskLease:
    """A task's dispatch state as Lua keeps it: queued, or leased to a worker."""

    state: str  # "queued" or "leased"
    lease_ms: int = 0  # the lease script sets the job's timer to the lease's time + this
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
    parent: ParentRef


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
    revived: bool = False  # an ended job runs again (redrive): it is kept, and announced
    input_changed: bool = False  # initial_data was replaced (a redrive's patch): store it again
    slot_joined: bool = False  # the job joined its concurrency key's line (concurrency.py)
    # A parallel state's branch state, stored as job hash fields beside the document:
    branch_items: dict[int, Any] = field(default_factory=dict)  # for_each items, written once
    branch_results: dict[int, Any] = field(default_factory=dict)  # results of settled branches
    drop_branches: int = 0  # forget the items and results of branches 0 .. n-1 (joined)
    # The outputs the change produced, in order: (state, output, merged into state_history),
    # each stored once as a field of its own (engine/runtime/outputs.py).
    outputs: list[tuple[str | None, Any, bool]] = field(default_factory=list)
    # The change may only bring the job's timer forward (see Orchestrator.commit): a task's
    # result, which ends that task and may start others, on a job with many tasks.
    lower_timer: bool = False

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
    parent: ParentRef | None = None,
    labels: dict[str, str] | None = None,
) -> JobDoc:
    doc: JobDoc = {
        "id": job_id,
        "blueprint": blueprint.name,
        "version": blueprint.version,
        "hash": blueprint.content_hash,
        "client": client,
        "status": JobStatus.PENDING,
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
        "outs": {},
        "layers": [],
        "oseq": 0,
    }
    if labels:
        doc["labels"] = labels
    return doc


def member(job_id: str, task_id: str) -> str:
    return f"{job_id}|{task_id}"


def queue_score(priority: int, now: int) -> float:
    """Higher priority first, then oldest first (ZPOPMIN order)."""
    return float(-priority * (1 << 41) + (now - 1_600_000_000_000))
