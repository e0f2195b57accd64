"""The orchestrator: reads a job, applies a transition rule, commits it in one guarded step.

Every change follows the same shape: read the job hash, compute the new document with the
pure `Machine`, then commit with the version read. A version mismatch means someone else
(another orchestrator, the timer loop, a late worker) changed the job first; we re-read and
decide again, so at most one of them wins each step.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hmac
import logging
import random
import re
import uuid
from collections import OrderedDict
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Coroutine,
    Iterable,
    Mapping,
    Sequence,
)
from typing import Any, TypeVar, cast

from engine.blueprint.model import Blueprint
from engine.clock import now_ms
from engine.jsonutil import dumps
from engine.runtime import background, deployment, outputs, tasks, webhooks
from engine.runtime.background import leases_of
from engine.runtime.controls import JobControls
from engine.runtime.dispatcher import Dispatcher, Waiter
from engine.runtime.host import Applied, Outcome, Rule
from engine.runtime.host import OrchestratorSettings as OrchestratorSettings
from engine.runtime.janitor import IndexJanitor
from engine.runtime.jobdoc import (
    TERMINAL,
    BranchData,
    ChildJob,
    Effects,
    Enqueue,
    Ignored,
    JobDoc,
    JobStatus,
    NeedBranchData,
    ParentRef,
    TaskLease,
    new_job,
    visible_status,
)
from engine.runtime.machine import Machine
from engine.runtime.observe import NoObserver, Observer
from engine.runtime.outputs import Kept
from engine.runtime.recent import RecentJobs
from engine.runtime.registry import Registry
from engine.runtime.schedules import Schedule
from engine.runtime.slots import SlotKeeper
from engine.runtime.waiting import pending_approval
from engine.store.apart import LEGACY_LEASES, fields_of, lease_field, stored_doc, task_field
from engine.store.client import (
    Commit,
    DeploymentCounts,
    JobRecord,
    Store,
    StoreTiming,
    StoreUnavailable,
)

log = logging.getLogger("interlock.orchestrator")

MAX_CONFLICT_RETRIES = 100
# A for_each's items are read this many at a time, ahead of the launches that need them: a
# branch result that launches the next branch then needs no read of its own.
ITEMS_AHEAD = 128
# A task result on a job with at least this many active tasks only lowers its timer.
WIDE_JOB_TASKS = 16
BLANKED_TASKS = 32  # ended tasks whose fields a narrow job blanks before deleting them all
BRANCH_MEMORY = 256  # jobs whose read-ahead items are kept between changes (LRU)
RESULTS_TOGETHER = 64  # results of one job applied as one change, at most
T = TypeVar("T")
# Runs a CPU-bound piece of work, e.g. on a thread (server/offload.py).
Offload = Callable[[Callable[[], list[str]]], Awaitable[list[str]]]
# A worker's result waiting to be applied: its body, its output_schema check, its answer.
_Result = tuple[dict[str, Any], Offload | None, "asyncio.Future[dict[str, Any]]"]


def _doc_or_reason(outcome: Outcome) -> dict[str, Any] | Ignored | None:
    return dict(outcome.doc) if isinstance(outcome, Applied) else outcome


LIST_BUDGET = 500  # index entries one listing request reads beyond its page, at most


def _reason(outcome: Ignored | None) -> str:
    return outcome.reason if outcome is not None else "job_not_found"


def _plain(doc: JobDoc) -> dict[str, Any]:
    """The document as the observers see it: a plain dict (they add `state_since`)."""
    return cast(dict[str, Any], doc)


def _task_fields(
    record: JobRecord | None,
    doc: JobDoc,
    leases: dict[str, str],
    started: list[str],
    dropped: list[str],
    fields: dict[str, str],
) -> list[str]:
    """Add to `fields` the job hash fields of the tasks a change started or replaced (see
    engine/store/apart.py); return the fields to delete: those of the tasks it ended. A
    job read with its tasks in the document has them all stored apart now."""
    tasks = doc["tasks"]
    if record is not None and record.tasks_apart:
        read = record.tasks_read
        changed = [t for t, task in tasks.items() if read.get(t) is not task]
        leased: Iterable[str] = started
        drop = [name for t in dropped for name in (task_field(t), lease_field(t))]
    else:
        changed, leased = list(tasks), leases
        drop = [LEGACY_LEASES] if record is not None else []
    for task_id in changed:
        fields[task_field(task_id)] = dumps(tasks[task_id])
    for task_id in leased:
        if task_id in leases:
            fields[lease_field(task_id)] = leases[task_id]
    return drop


def _blank_ended(
    record: JobRecord | None, doc: JobDoc, fx: Effects
) -> tuple[list[str], list[str], list[str]]:
    """The ended tasks whose fields (payload, record, lease) the change blanks, the tasks
    blanked before whose fields it deletes, and the ended tasks left to the usual way
    (deleted; at the job's end, their payloads emptied).

    A job with few tasks in flight (a chain of task states) blanks an ended task's fields:
    it writes them as "" in the HSET it makes anyway, rather than deleting them with one
    more command a task state. The document lists the tasks blanked (`blank`); once
    BLANKED_TASKS have gathered, or at the job's end, one change deletes their fields
    together, so a job that runs on and on keeps at most that many. A wide job deletes
    each ended task's fields with the change that ends it, as before (its changes end many
    tasks each)."""
    before: list[str] = doc.get("blank", [])
    ended = fx.dropped
    narrow = record is not None and record.tasks_apart and len(doc["tasks"]) < WIDE_JOB_TASKS
    if ended and narrow and not fx.terminal and len(before) + len(ended) <= BLANKED_TASKS:
        doc["blank"] = [*before, *ended]
        return ended, [], []
    if before:
        doc["blank"] = []
    return [], before, ended


def _waiting_since(doc: JobDoc) -> int | None:
    """Since when (ms) the job waits for a person's decision, or None if it does not."""
    approval = doc["approval"]
    if doc["status"] != JobStatus.WAITING_FOR_HUMAN or approval is None:
        return None
    return approval["asked_at"]


#: A job id in a cursor: generated ids are hex; a client-chosen one also has - and _.
CURSOR_JOB_ID = re.compile(r"^[A-Za-z0-9_-]{1,128}$")


def parse_cursor(cursor: str) -> tuple[int, str]:
    """(created ms, job id) from a job listing cursor `<ms>-<job id>`."""
    ms, sep, job_id = cursor.partition("-")
    if not sep or not ms.isdigit() or len(ms) > 15 or not CURSOR_JOB_ID.match(job_id):
        raise ValueError(f"{cursor[:80]!r} is not a job listing cursor")
    return int(ms), job_id


class Orchestrator:
    def __init__(
        self,
        store: Store,
        registry: Registry,
        settings: OrchestratorSettings,
        *,
        webhook_sender: webhooks.Sender | None = None,
        schedules: Sequence[Schedule] = (),
        observer: Observer | None = None,
    ) -> None:
        self.store = store
        self.observer: Observer = observer or NoObserver()  # metrics, logs (observe.py)
        self.registry = registry
        self.settings = settings
        # What we committed last: a change starts from it instead of reading Redis.
        self.recent = RecentJobs()
        self.dispatcher = Dispatcher(store, settings.rate_limits)
        self.dispatcher.on_lease = self.recent.leased
        self.dispatcher.on_undelivered = lambda worker_id, task: self._spawn(
            self.release(worker_id, task)
        )
        self.webhook_sender = webhook_sender
        self.schedules = tuple(schedules)
        self._done_waiters: dict[str, list[asyncio.Future[JobRecord | None]]] = {}
        # Announced ended while we were changing them (job id -> the version announced).
        self._deferred_done: dict[str, int | None] = {}
        self._tasks: list[asyncio.Task[None]] = []
        # Approval tokens and child job ids come from it: it must be unpredictable.
        self.rng: random.Random = random.SystemRandom()
        # Concurrency keys: admission and release of slots (engine/runtime/slots.py).
        self.slots = SlotKeeper(self, self._spawn, self.rng)
        self.webhook_wake = asyncio.Event()
        # Since when workers can reach us: a lease's silence before that does not count (no
        # orchestrator, or no Redis, could take their heartbeats).
        self.heard_since = now_ms()
        self._locks: dict[str, list[Any]] = {}  # job id -> [lock, users]
        # Workers' results waiting to be applied, by job id, and the tasks applying them.
        self._results: dict[str, list[_Result]] = {}
        self._drains: set[asyncio.Task[None]] = set()
        # What was read of recent jobs' parallel states (items read ahead), by job id.
        self._branches: OrderedDict[str, BranchData] = OrderedDict()
        self._followups: set[asyncio.Task[Any]] = set()
        # Events, pause and resume, redrive and rerun (engine/runtime/controls.py).
        self.controls = JobControls(self)

    # -- lifecycle -------------------------------------------------------------------------------

    async def start(self) -> None:
        self.heard_since = now_ms()
        await self.registry.publish(self.store)
        loops = {
            "dispatcher": self.dispatcher.run(),
            "timers": background.timer_loop(self),
            "notifications": background.listen(self),
            "deployment": deployment.watch(self.store),  # notices a wiped store
        }
        if self.webhook_sender is not None:
            loops["webhooks"] = background.webhook_loop(self)
        if self.schedules:
            loops["schedules"] = background.schedule_loop(self)
        # Expired jobs leave their client index entries: drop them, whoever the client.
        clients = (*self.settings.clients, *(schedule.client for schedule in self.schedules))
        loops["janitor"] = IndexJanitor(self.store).run(clients)
        self._tasks = [
            asyncio.create_task(work, name=f"interlock-{name}") for name, work in loops.items()
        ]

    async def stop(self) -> None:
        self.dispatcher.close()
        if self._followups:
            await asyncio.wait(self._followups, timeout=5)
        if self._drains:  # results being applied: let them land and be answered
            await asyncio.wait(self._drains, timeout=5)
        for task in self._tasks:
            task.cancel()
        _, pending = await asyncio.wait(self._tasks, timeout=5)
        for task in pending:
            log.error("background task %s did not stop within 5 s", task.get_name())
        self._tasks = []

    # -- clients -----------------------------------------------------------------------------------

    async def submit(
        self,
        blueprint: Blueprint,
        initial_data: Any,
        *,
        client: str,
        webhook_url: str | None = None,
        dispatch_timeout_ms: int | None = None,
        result_timeout_ms: int | None = None,
        labels: dict[str, str] | None = None,
    ) -> str:
        job_id = uuid.uuid4().hex
        created = await self.create(
            job_id,
            blueprint,
            initial_data,
            client=client,
            webhook_url=webhook_url,
            dispatch_timeout_ms=dispatch_timeout_ms,
            result_timeout_ms=result_timeout_ms,
            labels=labels,
        )
        if not created:  # a uuid4 collision: astronomically unlikely, but never overwrite
            raise StoreUnavailable("job id collision; retry the request")
        return job_id

    async def create(
        self,
        job_id: str,
        blueprint: Blueprint,
        initial_data: Any,
        *,
        client: str,
        parent: ParentRef | None = None,
        fingerprint: str | None = None,
        **options: Any,
    ) -> bool:
        """Create and start a job with a given id; False if that id exists already.
        `fingerprint` identifies the request of an idempotent submit (kept in the job)."""
        now = now_ms()
        doc = new_job(
            job_id=job_id,
            blueprint=blueprint,
            client=client,
            initial_data=initial_data,
            now=now,
            parent=parent,
            **options,
        )
        if fingerprint is not None:
            doc["request_fingerprint"] = fingerprint
        machine = await self.registry.machine(blueprint.content_hash, self.store)
        fx = machine.start(doc, now, self.rng)
        return await self.commit(machine, None, doc, fx, index=(client, now)) is not None

    async def get_job(self, job_id: str, client: str | None) -> JobDoc | None:
        record = await self.read(job_id, client)
        return record.doc if record is not None else None

    async def wait_job(self, job_id: str, client: str | None, wait_s: float) -> JobDoc | None:
        """The job once it is terminal, or as it is when `wait_s` seconds have passed."""
        record = await self.read(job_id, client, wait_s)
        return record.doc if record is not None else None

    async def read(self, job_id: str, client: str | None, wait_s: float = 0.0) -> JobRecord | None:
        """The job as `client` may see it (None if unknown or another client's). With
        `wait_s` > 0, once it is terminal, or as it is when the wait ends.

        A job that ends in this process is handed to its waiters as committed, without a
        read; one that ends elsewhere is announced on the `done` channel and read."""
        if wait_s <= 0:
            return self._owned(await self.store.read_job(job_id), client)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_s
        waiters = self._done_waiters.setdefault(job_id, [])
        future: asyncio.Future[JobRecord | None] = loop.create_future()
        waiters.append(future)  # before the read: no gap
        try:
            # What we committed last is good enough to decide whether to wait: had the job
            # ended elsewhere since, its `done` announcement would have dropped the entry.
            # An end is not (a redrive elsewhere may not be announced here yet): it is the
            # answer only while the stored version is still the one we committed.
            record = self.recent.record(job_id)
            if record is not None and record.doc["status"] in TERMINAL:
                stored = await self.store.version(job_id)
                record = record if stored == record.version else None
            if record is None:
                record = await self.store.read_job(job_id)
            record = self._owned(record, client)
            while record is not None and record.doc["status"] not in TERMINAL:
                ended: JobRecord | None = None
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout_at(deadline):
                        ended = await future
                record = self._owned(ended or await self.store.read_job(job_id), client)
                if loop.time() >= deadline:
                    break
                # Not ended: woken by a redrive's announcement (it goes out on the same
                # channel, so that other orchestrators forget the end): wait on.
                waiters.remove(future)
                future = loop.create_future()
                waiters.append(future)
            return record
        finally:
            with contextlib.suppress(ValueError):
                waiters.remove(future)
            if not waiters and self._done_waiters.get(job_id) is waiters:
                self._done_waiters.pop(job_id, None)

    @staticmethod
    def _owned(record: JobRecord | None, client: str | None) -> JobRecord | None:
        if record is None or (client is not None and record.doc.get("client") != client):
            return None
        return record

    async def history(self, job_id: str, client: str | None) -> list[dict[str, Any]] | None:
        """The job's events in time order, with the pick-up of each task a worker holds now
        (written for good when the attempt ends)."""
        record = await self.read(job_id, client)
        if record is None:
            return None
        events = await self.store.history(job_id)
        leases = leases_of(record)
        running = [
            tasks.picked_up(task, lease)
            for task_id, task in record.doc["tasks"].items()
            if (lease := leases.get(task_id)) is not None and lease.state == "leased"
        ]
        if not running:
            return events
        return sorted([*events, *running], key=lambda event: int(event.get("at", 0)))

    async def list_jobs(
        self,
        client: str,
        *,
        status: str | None,
        blueprint: str | None,
        limit: int,
        cursor: str | None = None,
        labels: Sequence[tuple[str, str]] = (),
    ) -> tuple[list[dict[str, Any]], str | None]:
        """The client's jobs, newest first, filtered (`labels`: each (name, value) must
        match; the first one's index is walked instead of the client's). `cursor` is the
        `next` value of the previous page; returns (jobs, next), next None at the end.
        Raises ValueError for a cursor this method did not produce."""
        after = parse_cursor(cursor) if cursor else None
        wanted = dict(labels)
        jobs: list[dict[str, Any]] = []
        # A filter matching nothing must not walk the whole history on one request: after
        # LIST_BUDGET entries, answer what was found, with a cursor to go on from there.
        budget = LIST_BUDGET + limit
        while len(jobs) < limit:
            if budget <= 0 and after is not None:
                return jobs, f"{after[0]}-{after[1]}"
            size = max(limit, 50)
            if labels:
                label, value = labels[0]
                batch = await self.store.job_ids_for_label(
                    client, label, value, limit=size, after=after
                )
            else:
                batch = await self.store.job_ids_for_client(client, limit=size, after=after)
            if not batch:
                return jobs, None
            budget -= len(batch)
            docs = await self.store.read_docs([job_id for job_id, _ in batch])
            for (job_id, created), doc in zip(batch, docs, strict=True):
                after = (created, job_id)
                if doc is None:
                    continue
                if (
                    (status is None or visible_status(doc) == status)
                    and (blueprint is None or doc["blueprint"] == blueprint)
                    and all(doc.get("labels", {}).get(k) == v for k, v in wanted.items())
                ):
                    jobs.append(doc)
                    if len(jobs) == limit:
                        return jobs, f"{created}-{job_id}"
        return jobs, None

    async def cancel(self, job_id: str, client: str | None) -> dict[str, Any] | Ignored | None:
        """Cancel a job: its new document, Ignored when already ended, None when unknown."""
        if await self.get_job(job_id, client) is None:
            return None

        async def rule(record: JobRecord, machine: Machine) -> Effects | Ignored:
            return machine.cancel(record.doc, leases_of(record), now_ms())

        return _doc_or_reason(await self.apply(job_id, rule))

    async def decide(
        self, job_id: str, client: str | None, decision: str, *, token: str | None = None
    ) -> dict[str, Any] | Ignored | None:
        """Apply an approval decision by the job's owner (client) or through the approval
        link (token). Returns the new document, Ignored with a reason, or None if unknown."""
        return _doc_or_reason(await self.decide_committed(job_id, client, decision, token=token))

    async def decide_committed(
        self, job_id: str, client: str | None, decision: str, *, token: str | None = None
    ) -> Outcome:
        """`decide`, answered with the job as the decision committed it (with its leases)."""
        if token is None and await self.get_job(job_id, client) is None:
            return None
        by = "link" if token is not None else f"client:{client}"

        async def rule(record: JobRecord, machine: Machine) -> Effects | Ignored:
            now = now_ms()
            approval = pending_approval(record.doc, now)  # one past its timeout is gone
            expected = str(approval["token"] if approval else "").encode()
            if token is not None and not hmac.compare_digest(expected, token.encode()):
                return Ignored("invalid_token")
            return machine.on_decision(record.doc, decision, now, self.rng, by=by)

        return await self.apply(job_id, rule)

    async def _start_child(self, child: ChildJob, client: str) -> None:
        blueprint = self.registry.current(child.blueprint)
        if blueprint is None:
            log.error(
                "subflow blueprint %s is not loaded; job %s waits",
                child.blueprint,
                child.parent["job_id"],
            )
            return
        await self.create(
            child.job_id, blueprint, child.initial_data, client=client, parent=child.parent
        )

    async def _notify_parent(self, child: JobDoc) -> None:
        """Resume the parent of a finished child (exactly once: the parent's guard checks the
        child id; if we die first, the parent's periodic check finds the child ended)."""
        parent = child["parent"]
        assert parent is not None

        async def rule(record: JobRecord, machine: Machine) -> Effects | Ignored:
            doc, leases = record.doc, leases_of(record)
            return machine.on_child_done(doc, child, now_ms(), self.rng, record.branch, leases)

        # gather: a subflow branch's end may launch the next branch or join the state
        await self.apply(parent["job_id"], rule, gather=True)

    # -- workers -----------------------------------------------------------------------------------

    async def register_worker(self, worker_id: str, registration: dict[str, Any]) -> None:
        await self.store.register_worker(worker_id, registration, self.settings.worker_ttl_ms)

    async def heartbeat(
        self, worker_id: str, tasks: list[str] | None, alive_ms: int, skills: Sequence[str] = ()
    ) -> tuple[bool, list[str]]:
        ttl_ms = self.settings.worker_ttl_ms
        return await self.store.heartbeat(worker_id, tasks, alive_ms, ttl_ms, skills)

    async def next_task(
        self, worker_id: str, skills: tuple[str, ...], wait_s: float
    ) -> dict[str, Any] | None:
        return await self.dispatcher.next_task(worker_id, skills, wait_s)

    async def next_tasks(
        self,
        worker_id: str,
        skills: tuple[str, ...],
        wait_s: float,
        max_tasks: int,
        gone: Callable[[], bool] | None = None,
    ) -> list[dict[str, Any]]:
        """Up to `max_tasks` leased task payloads for one poll: as soon as at least one is
        leased (those leased together come together), or [] after `wait_s` seconds.
        `gone()`: whether the poll's connection closed (no task is leased to it then)."""
        return await self.dispatcher.next_tasks(worker_id, skills, wait_s, max_tasks, gone)

    async def submit_result(
        self, worker_id: str, result: dict[str, Any], check: Offload | None = None
    ) -> dict[str, Any]:
        """Apply a worker's result once; anything else is answered `ignored` with a reason.
        `check` runs the output_schema check of a large result (off the event loop: the
        server's offload); without it, the check runs where the result is applied."""
        body = {**result, "worker_id": worker_id}
        job_id = str(result.get("job_id", ""))
        answer: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        waiting = self._results.get(job_id)
        if waiting is None:
            # The results of one job that arrive while its last ones are being applied
            # (the branches of a wide parallel state) are applied together, as one change.
            waiting = self._results[job_id] = []
            drain = asyncio.create_task(self._apply_results(job_id, waiting))
            self._drains.add(drain)
            drain.add_done_callback(self._drains.discard)
        waiting.append((body, check, answer))
        return await answer

    async def _apply_results(self, job_id: str, waiting: list[_Result]) -> None:
        """Apply the job's waiting results, those that arrived together as one change, and
        answer each, until none are left."""
        batch: list[_Result] = []
        try:
            while waiting:
                batch = waiting[:RESULTS_TOGETHER]
                del waiting[:RESULTS_TOGETHER]
                try:
                    answers = await self._apply_batch(job_id, batch)
                except Exception as exc:
                    for _, _, answer in batch:
                        if not answer.done():
                            answer.set_exception(exc)
                    continue
                for (_, _, answer), given in zip(batch, answers, strict=True):
                    if not answer.done():
                        answer.set_result(given)
            batch = []
        finally:
            del self._results[job_id]
            for _, _, answer in batch + waiting:  # (cancelled: shutting down)
                answer.cancel()

    async def _apply_batch(self, job_id: str, batch: list[_Result]) -> list[dict[str, Any]]:
        bodies = [body for body, _, _ in batch]
        checked: list[tasks.Checked | None] = [None] * len(batch)
        refused: list[Ignored | None] = [None] * len(batch)

        async def rule(record: JobRecord, machine: Machine) -> Effects | Ignored:
            for n, (body, check, _) in enumerate(batch):
                if check is None:
                    continue
                # (once, unless a fresh read finds another schema)
                schema, known = machine.output_schema_of(record.doc, body), checked[n]
                if schema is not None and (known is None or known[0] is not schema):
                    problems = functools.partial(tasks.output_problems, schema, body.get("data"))
                    checked[n] = (schema, await check(problems))
            leases = leases_of(record)
            fx, refused[:] = machine.on_results(
                record.doc, leases, bodies, now_ms(), self.rng, record.branch, checked
            )
            if fx is None:
                return next(why for why in refused if why is not None)
            fx.lower_timer = True
            return fx

        outcome = await self.apply(job_id, rule, gather=True)
        if isinstance(outcome, Applied):
            return [
                {"status": "accepted"}
                if why is None
                else {"status": "ignored", "reason": why.reason}
                for why in refused
            ]
        return [{"status": "ignored", "reason": _reason(outcome)} for _ in batch]

    async def release(self, worker_id: str, task: dict[str, Any]) -> str:
        """Put back a task leased to a poll whose worker had already gone (the HTTP client
        closed the connection before the answer). Returns "released" or why not."""

        async def rule(record: JobRecord, machine: Machine) -> Effects | Ignored:
            leases = leases_of(record)
            return machine.on_release(
                record.doc, leases, worker_id, task["task_id"], now_ms(), record.branch
            )

        outcome = await self.apply(str(task["job_id"]), rule)
        return "released" if isinstance(outcome, Applied) else _reason(outcome)

    async def progress(self, worker_id: str, job_id: str, task_id: str, payload: Any) -> str:
        """Record a progress event; returns "accepted" or the reason it was ignored."""

        async def rule(record: JobRecord, machine: Machine) -> Effects | Ignored:
            leases = leases_of(record)
            return machine.on_progress(record.doc, leases, worker_id, task_id, payload, now_ms())

        outcome = await self.apply(job_id, rule)
        return "accepted" if isinstance(outcome, Applied) else _reason(outcome)

    # -- internals ---------------------------------------------------------------------------

    async def apply(self, job_id: str, rule: Rule, *, gather: bool = False) -> Outcome:
        """Read the job, let `rule` decide, and commit what it decided, once.

        Answers `Applied` with the committed document, `Ignored` with the rule's reason, or
        None when the job does not exist. A commit refused because the job changed since
        it was read (another orchestrator, a lease, the timer) is decided again on a fresh
        read; clashes that persist back off. Changes to one job from this process queue on
        a local lock, so versions only clash with other processes and with leases.

        A parallel state's stored items and results are read when the rule asks for them
        (`NeedBranchData`; the rule then decides again on the job as it was), or with
        `gather` up front, whatever the job's next change may need (`Machine.branch_wants`).
        """
        async with self._lock(job_id):
            # What was read of the job's branch state, kept meanwhile and between changes.
            branch = self._branches.pop(job_id, None) or BranchData()
            try:
                return await self._apply(job_id, rule, gather, branch)
            finally:
                if branch.items:  # (not the results: a join reads every one, once)
                    branch.results, branch.version = None, -1
                    self._branches[job_id] = branch
                    while len(self._branches) > BRANCH_MEMORY:
                        self._branches.popitem(last=False)

    async def _apply(self, job_id: str, rule: Rule, gather: bool, branch: BranchData) -> Outcome:
        need: NeedBranchData | None = None
        again = True  # start from what we committed last
        for retry in range(MAX_CONFLICT_RETRIES):
            record = self.recent.record(job_id) if again else None
            again = False
            remembered = record is not None
            if record is None:
                record = await self.store.read_job(job_id)
            if record is None:
                return None
            machine = await self.registry.machine(record.doc["hash"], self.store)
            if need is not None or gather:
                wanted = (need.items, need.results) if need else machine.branch_wants(record.doc)
                await self._read_branches(record, branch, *wanted)
                record.branch = branch
            try:
                decided = await rule(record, machine)
            except NeedBranchData as asked:
                # Nothing of the attempt counts (it changed a copy): decide again, on the
                # same version of the job, with what it asked for.
                need, again = asked, remembered
                continue
            need = None
            if isinstance(decided, Ignored):
                if remembered:
                    # Decided on what we remembered, which may be stale, and no version
                    # guard checked it: decide again on a fresh read.
                    continue
                return decided
            committed = await self.commit(machine, record, record.doc, decided)
            if committed is not None:
                return Applied(committed.doc, committed.leases)
            # The usual clash is a lease (one quick script): re-read at once, back off
            # only if clashes persist.
            if retry >= 3:
                await asyncio.sleep(self.rng.uniform(0, min(0.02, 0.0005 * 2**retry)))
        raise StoreUnavailable(f"job {job_id} changed {MAX_CONFLICT_RETRIES} times while we tried")

    async def _read_branches(
        self, record: JobRecord, branch: BranchData, items: list[int], results: bool
    ) -> None:
        """Complete `branch` with what is asked of the job's parallel state: items (kept
        while the state runs: they never change) and every result stored at the version
        read (results are read again for another version)."""
        book = record.doc["parallel"]
        if book is None or "run" not in book:  # (an older book carries its own: upgrade)
            return
        if branch.run != book["run"]:
            branch.run, branch.items, branch.results, branch.version = book["run"], {}, None, -1
        if branch.version != record.version:
            branch.results, branch.version = None, record.version
        missing = [n for n in items if n not in branch.items and 0 <= n < book["count"]]
        count = book["count"] if results and branch.results is None else 0
        if not missing and not count:
            return
        if missing:  # read ahead; keep only the items still to launch
            ahead = range(max(missing), min(book["count"], max(missing) + ITEMS_AHEAD))
            missing = sorted({*missing, *ahead})
            branch.items = {
                n: v for n, v in branch.items.items() if n >= book["next"] or n in items
            }
        found, stored = await self.store.read_branches(record.doc["id"], missing, count)
        branch.items.update(found)
        if count:
            branch.results = stored

    @contextlib.asynccontextmanager
    async def _lock(self, job_id: str) -> AsyncIterator[None]:
        entry = self._locks.get(job_id)
        if entry is None:
            entry = self._locks[job_id] = [asyncio.Lock(), 0]
        entry[1] += 1
        try:
            async with entry[0]:
                yield
        finally:
            entry[1] -= 1
            if entry[1] == 0:
                del self._locks[job_id]
                if job_id in self._deferred_done:
                    self.job_done(job_id, announced=self._deferred_done.pop(job_id))

    async def commit(
        self,
        machine: Machine,
        record: JobRecord | None,
        doc: JobDoc,
        fx: Effects,
        *,
        index: tuple[str, int] | None = None,
    ) -> JobRecord | None:
        """Commit the change `fx` made to the job `record` (None: create it) as `doc`; the
        job as committed, or None when the version guard refused it (or the outcome is
        unknown)."""
        now = now_ms()
        doc["updated_at"] = now
        history_start = doc["hseq"]
        doc["hseq"] += len(fx.history)
        raw_leases, handoffs, enqueue = self._place_tasks(record, fx, now)
        started = [e.task_id for e in fx.enqueue]
        # A task's result on a job with many tasks may only bring its timer forward (to the
        # deadlines of the tasks it starts): the answered task's deadlines only go, and
        # looking at every other task would cost a branch result in proportion to the
        # branches in flight. A timer that fires early finds nothing due and is set exactly.
        lower = fx.lower_timer and len(doc["tasks"]) >= WIDE_JOB_TASKS and not fx.terminal
        leases = {
            task_id: TaskLease.decode(raw_leases[task_id])
            for task_id in (started if lower else raw_leases)
            if task_id in raw_leases
        }
        timer_ms = machine.next_due(doc, leases, started if lower else None)
        version = (record.version if record else 0) + 1
        note = self.observer.before_commit(machine, _plain(doc), fx)  # observe.py: hook 1 of 2
        # The initial_data is stored apart, once (a for_each over it must not rewrite it with
        # every branch result); a job written before it was gets it stored now, and a
        # redrive's patch replaces it. So is each step output, as it is produced
        # (engine/runtime/outputs.py), and so are the active tasks (engine/store/apart.py).
        written = outputs.write(doc, record.kept if record else Kept(), fx.outputs)
        blanked, purged, ended = _blank_ended(record, doc, fx)
        doc_json = dumps(stored_doc(doc, outputs.APART))
        fields = {"v": str(version), "doc": doc_json}
        fields.update(written.fields)
        # (A finished job's hash expires whole: the fields of its last tasks need no deleting.)
        finished = [] if fx.terminal else ended
        drop_fields = _task_fields(record, doc, raw_leases, started, finished, fields)
        drop_fields += [name for task_id in purged for name in fields_of(task_id)]
        input_bytes = None
        if record is None or not record.input_apart or fx.input_changed:
            fields["input"] = dumps(doc["initial_data"])
            input_bytes = len(fields["input"])
        webhook = fx.terminal and bool(doc.get("webhook_url"))
        # The first end of a job (never redriven: no earlier attempts) has its webhook sent
        # from here, with the document committed, by this orchestrator, which takes the
        # outbox entry's claim and counts the attempt in the commit itself (see
        # background.deliver_now). Any other goes out through the outbox.
        direct = webhook and self.webhook_sender is not None and not doc.get("redrives")
        webhook_ms = now if webhook else None
        if direct:
            fields["webhook_attempts"] = "1"
            webhook_ms = now + self.settings.webhook_direct_ms
        change = Commit(
            job_id=doc["id"],
            expected_version=record.version if record else None,
            fields=fields,
            timer_ms=timer_ms,
            timer_lower=lower,
            payloads={e.task_id: dumps(e.payload) for e in fx.enqueue},
            drop=ended,
            blank=blanked,
            enqueue=[(e.task_type, e.member, e.score) for e in enqueue],
            dequeue=fx.dequeue,
            ttl_ms=machine.settings.retention_ms if fx.terminal else None,
            persist=fx.revived and not fx.terminal,  # (ended again at once: it expires)
            index=index,
            labels=doc.get("labels") if index else None,
            webhook_ms=webhook_ms,
            webhook_end=doc.get("redrives", 0),
            done=fx.terminal or fx.revived,  # a redrive is announced: others forget the end
            history=fx.history,
            drop_fields=drop_fields,
            branch_items={n: dumps(item) for n, item in fx.branch_items.items()},
            branch_results={n: dumps(result) for n, result in fx.branch_results.items()},
            drop_branches=fx.drop_branches,
            drop_outputs=written.drop,
            # Indexes the jobs waiting for a person, for metrics (server/metrics.py).
            human_ms=_waiting_since(doc),
        )
        applied = False
        try:
            applied = await self.store.commit(change, history_start=history_start)
        finally:
            for waiter, payload in handoffs:
                if applied:
                    self.dispatcher.deliver(waiter, payload)
                else:
                    self.dispatcher.unclaim(waiter)
            if not applied:  # refused, or unknown (an error): read the job next time
                self.recent.forget(doc["id"])
        if not applied:
            return None
        self.recent.remember(
            doc["id"],
            version,
            doc_json,
            raw_leases,
            fx.terminal,
            initial_data=doc["initial_data"],
            input_bytes=input_bytes,
            kept=written.kept,
            tasks=(tasks := dict(doc["tasks"])),
        )
        self.observer.committed(machine, _plain(doc), fx, note)  # observe.py: hook 2 of 2
        queued = {e.task_type for e in enqueue}
        committed = JobRecord(
            version,
            doc,
            raw_leases,
            input_apart=True,
            kept=written.kept,
            tasks_apart=True,
            tasks_read=tasks,
        )
        await self._after_commit(doc, fx, webhook, queued, committed, direct=direct)
        return committed

    def _place_tasks(
        self, record: JobRecord | None, fx: Effects, now: int
    ) -> tuple[dict[str, str], list[tuple[Waiter, dict[str, Any]]], list[Enqueue]]:
        """The job's raw leases after the change, the hand-offs to open polls, and the new
        tasks left for the queues.

        The leases are the ones read and stored (not fx.leases: a rule need not pass them
        on), less the tasks the change ends, plus the ones it starts. A task some open poll
        can take is leased to it in this very commit (no queue, no second script); the
        others are queued for the dispatcher."""
        dropped = set(fx.dropped)
        raw_leases = {
            task_id: raw
            for task_id, raw in (record.leases if record else {}).items()
            if task_id not in dropped
        }
        handoffs: list[tuple[Waiter, dict[str, Any]]] = []
        enqueue: list[Enqueue] = []
        for e in fx.enqueue:
            waiter = self.dispatcher.claim(e.task_type)
            if waiter is None:
                lease = TaskLease("queued", e.lease_ms)
                enqueue.append(e)
            else:
                lease = TaskLease("leased", e.lease_ms, waiter.worker_id, now)
                handoffs.append((waiter, e.payload))
            raw_leases[e.task_id] = lease.encode()
        return raw_leases, handoffs, enqueue

    async def _after_commit(
        self,
        doc: JobDoc,
        fx: Effects,
        webhook: bool,
        queued: set[str],
        record: JobRecord,
        *,
        direct: bool = False,
    ) -> None:
        """Work outside the job's slot. Each step is safe to lose in a crash: leases expire,
        children are re-created by the parent's periodic check, and a parent finds its
        ended child on that same check. Steps that change other jobs run as tasks of their
        own, outside this job's lock (a parent and its child must never wait on each other).
        """
        if "slot" in doc:
            await self.slots.after_commit(doc, fx)
        partition = self.store.keys.partition(doc["id"])
        for task_type in queued:
            self.dispatcher.task_queued(task_type, partition)
        for worker_id, task_id in fx.cancel_on_worker:
            await self.store.request_cancel(worker_id, task_id, self.settings.cancel_ttl_ms)
        for child in fx.children:
            self._spawn(self._start_child(child, doc["client"]))
        for child_id in fx.cancel_children:
            self._spawn(self.cancel(child_id, None))
        if fx.terminal:
            self.job_done(doc["id"], record)
            if direct:
                self._spawn(background.deliver_now(self, doc.copy()))
            elif webhook:
                self.webhook_wake.set()
            if fx.notify_parent:
                self._spawn(self._notify_parent(doc))

    async def join(self) -> None:
        """Wait until the follow-up steps started so far (and those they start) are done:
        children created, parents notified. For drivers that run the orchestrator without
        its loops, such as `interlock test`."""
        while self._followups:
            await asyncio.wait(set(self._followups))

    def _spawn(self, work: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.create_task(work)
        self._followups.add(task)
        task.add_done_callback(self._followup_done)

    def _followup_done(self, task: asyncio.Task[Any]) -> None:
        self._followups.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error(
                "follow-up step failed (a periodic check will retry it): %r", task.exception()
            )

    def job_done(
        self, job_id: str, record: JobRecord | None = None, *, announced: int | None = None
    ) -> None:
        """Wake the waiters of an ended job: with the job as committed here, or with None
        (it ended elsewhere, or we cannot tell) so that they read it. `announced`: the
        version the `done` announcement carries; the one of our own commit leaves what we
        remember of the job as it is."""
        if record is None:
            if job_id in self._locks:
                # A change of ours is on its way (the announcement may be its own, read
                # back before the commit returned): look again once it has landed.
                self._deferred_done[job_id] = announced
                return
            # Ended elsewhere, or redriven (an end is not final): what we hold may be out of
            # date, unless it is the very version announced (our own commit's, read back).
            # (Waiters present when a job ended here were handed it at its commit.)
            if announced is None or self.recent.version(job_id) != announced:
                self.recent.forget(job_id)
        for future in self._done_waiters.get(job_id, []):
            if not future.done():
                future.set_result(record)

    def lost_notifications(self) -> None:
        """The `done` subscription was down: anything remembered may have ended since."""
        self.recent.clear()
        for job_id in list(self._done_waiters):
            self.job_done(job_id)

    # -- what the server asks about (so that it never reaches into the store or registry) --------

    def blueprint(self, name: str) -> Blueprint | None:
        """The loaded blueprint called `name` (the version new jobs get)."""
        return self.registry.current(name)

    def blueprint_for_endpoint(self, endpoint: str) -> Blueprint | None:
        """The loaded blueprint whose api_endpoint is `endpoint`."""
        return self.registry.by_endpoint.get(endpoint)

    def blueprints(self) -> list[Blueprint]:
        """Every loaded blueprint, by name."""
        return [self.registry.by_name[name] for name in sorted(self.registry.by_name)]

    async def pinned_blueprint(self, doc: Mapping[str, Any]) -> Blueprint:
        """The blueprint version a job runs (it may no longer be the loaded one)."""
        return (await self.registry.machine(doc["hash"], self.store)).bp

    async def worker_registration(self, worker_id: str) -> dict[str, Any] | None:
        return await self.store.worker_registration(worker_id)

    def watch_changes(self, job_id: str | None) -> contextlib.AbstractContextManager[Any]:
        """A future completed by the next change this process applies to the job (any job,
        for None); enter it before reading, so that a change in between still wakes."""
        return self.store.changes.watch(job_id)

    async def workers(self, limit: int) -> list[tuple[str, dict[str, Any], Any]]:
        """Registered workers seen within the registration TTL, most recent first."""
        return await self.store.workers(now_ms(), self.settings.worker_ttl_ms, limit)

    async def queue_depths(self, task_types: list[str]) -> dict[str, int]:
        """How many tasks wait in the queues of each task type."""
        return await self.store.queue_depths(task_types)

    async def deployment_counts(
        self, task_types: list[str], connected_ms: int, now: int
    ) -> DeploymentCounts:
        """Queues, connected workers, webhook backlog and approvals waiting, deployment-wide."""
        return await self.store.deployment_counts(task_types, connected_ms, now)

    async def workers_seen(
        self, task_type: str, connected_ms: int, now: int
    ) -> tuple[int, int | None]:
        """Workers of `task_type` seen within `connected_ms`, and ms since the last one."""
        return await self.store.workers_seen(task_type, connected_ms, now)

    async def worker_alive(self, worker_id: str) -> dict[str, Any] | None:
        """The worker's last heartbeat (`at`, `tasks`), or None once it has expired."""
        return await self.store.worker_alive(worker_id)

    async def slot_counts(self, tag: str, member: str) -> tuple[int, int | None, int]:
        """A concurrency key's jobs holding a slot, the member's place in line (0-based, or
        None), and how many wait in line."""
        return await self.store.slot_counts(tag, member)

    def time_store(self, timing: StoreTiming) -> None:
        """Have every batched store round trip reported to `timing` (the metrics)."""
        self.store.timing = timing

    def store_wiped_at(self) -> int | None:
        """When this process found the store wiped (its deployment marker gone), or None."""
        return self.store.wiped_at

    async def store_reachable(self) -> bool:
        return await self.store.ping()
