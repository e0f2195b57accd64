"""The orchestrator's background loops: timers, notifications, webhooks and schedules.

Each loop is owned by `Orchestrator.start()`, which cancels and awaits it on `stop()`; each
calls `checkpoint()` on every turn so that a cancellation swallowed by a driver still ends it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from engine.clock import now_ms
from engine.runtime import webhooks
from engine.runtime.aio import Throttle, checkpoint
from engine.runtime.host import LoopHost
from engine.runtime.jobdoc import TERMINAL, Effects, Ignored, JobDoc, Leases, TaskLease
from engine.runtime.machine import Machine
from engine.runtime.registry import UnknownBlueprintVersion
from engine.runtime.schedules import CATCH_UP
from engine.store.client import JobRecord, StoreUnavailable, WebhookDue

log = logging.getLogger("interlock.orchestrator")
throttle = Throttle(log)


async def bounded(limit: int, calls: list[Coroutine[Any, Any, None]]) -> None:
    """Run `calls` with at most `limit` at a time (as many were in flight when partitions
    were claimed one after the other)."""
    gate = asyncio.Semaphore(limit)

    async def one(call: Coroutine[Any, Any, None]) -> None:
        async with gate:
            await call

    await asyncio.gather(*(one(call) for call in calls))


def leases_of(record: JobRecord) -> Leases:
    return {task_id: TaskLease.decode(raw) for task_id, raw in record.leases.items()}


async def listen(orch: LoopHost) -> None:
    while True:
        checkpoint()
        try:
            async for item in orch.store.notifications():
                checkpoint()
                if item is None:
                    continue
                kind, message = item
                if kind == "ready":  # `task_type|partition` lines
                    for line in message.split("\n"):
                        task_type, _, partition = line.rpartition("|")
                        with contextlib.suppress(ValueError):
                            orch.dispatcher.task_queued(task_type, int(partition))
                else:  # "done": `<job id>:<version>` words
                    for word in message.split():
                        job_id, _, version = word.partition(":")
                        orch.job_done(job_id, announced=int(version) if version else None)
        except Exception as exc:  # redis-py raises its own ConnectionError tree here
            checkpoint(exc)
            log.warning("notification subscription lost (%s); resubscribing", exc)
        await asyncio.sleep(0.5)
        # We may have missed notifications meanwhile: look again at everything they cover.
        orch.lost_notifications()
        orch.dispatcher.wake.set()


async def timer_loop(orch: LoopHost) -> None:
    store_down = False
    while True:
        checkpoint()
        started = time.monotonic()
        pause = orch.settings.timer_interval_s
        try:
            await fire_timers(orch)
            if store_down:  # workers could not heartbeat meanwhile: their silence restarts
                orch.heard_since = now_ms()
                store_down = False
        except StoreUnavailable as exc:
            checkpoint(exc)
            throttle.warning("timers", "timer loop: %s", exc)
            store_down = True
            pause = 1.0  # the store is down: no point asking ten times a second
        elapsed = time.monotonic() - started
        await asyncio.sleep(max(0.0, pause - elapsed))


async def fire_timers(orch: LoopHost) -> None:
    # Every partition's due timers in one round trip (one call per master on a cluster):
    # the cost of a turn does not grow with the partition count.
    due = await orch.store.claim_timers(
        now_ms(), orch.settings.timer_batch, orch.settings.timer_claim_ms
    )
    await bounded(orch.settings.timer_batch, [fire(orch, job_id) for job_id in due])


async def fire(orch: LoopHost, job_id: str) -> None:
    """Apply whatever of the job has fallen due (and put its timer back)."""

    async def rule(record: JobRecord, machine: Machine) -> Effects | Ignored:
        doc = record.doc
        if "slot" in doc:  # a concurrency slot to give back, or to wait for
            settled: Effects | Ignored | None = await orch.slots.on_timer(doc)
            if settled is not None:
                return settled
        leases = leases_of(record)
        holders = {lease.worker for lease in leases.values() if lease.state == "leased"}
        alive = {worker: await orch.store.worker_alive(worker) for worker in holders}
        child = None
        now = now_ms()
        subflow = doc["subflow"]
        if subflow is not None and now >= subflow["check_at"]:
            found = await orch.store.read_job(subflow["child_id"])
            child = found.doc if found else None
        children: dict[str, JobDoc | None] = {}
        for child_id in machine.child_checks(doc, now):  # at most the branches running
            found = await orch.store.read_job(child_id)
            children[child_id] = found.doc if found else None
        fx = machine.on_timer(
            doc, leases, now, orch.rng, alive, child, orch.heard_since, record.branch, children
        )
        return fx if fx is not None else Effects(leases=leases)  # ended: put the timer back

    try:
        if await orch.apply(job_id, rule, gather=True) is None and not await orch.store.exists(
            job_id
        ):
            await orch.store.drop_timer(job_id)
    except UnknownBlueprintVersion as exc:
        log.error("job %s uses blueprint %s, which no orchestrator knows", job_id, exc)
    except StoreUnavailable as exc:
        checkpoint(exc)
        log.warning("timer for job %s: %s", job_id, exc)


async def webhook_loop(orch: LoopHost) -> None:
    while True:
        checkpoint()
        more = False
        try:
            more = await deliver_due(orch) >= orch.settings.webhook_batch
        except StoreUnavailable as exc:
            checkpoint(exc)
            log.warning("webhook loop: %s", exc)
        if not more:  # (a full claim: more may be due at once)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(1.0):
                    await orch.webhook_wake.wait()
        orch.webhook_wake.clear()


# POSTs in flight at once, over the sender's shared keep-alive connections (aiohttp's
# connector holds 100).
WEBHOOK_CONCURRENCY = 100


@dataclass
class WebhookOutcomes:
    """What a turn of deliveries records, in one round trip (Store.record_webhooks), and
    the failures to log once it is recorded."""

    attempted: list[str] = field(default_factory=list)
    done: list[str] = field(default_factory=list)
    retry: dict[str, int] = field(default_factory=dict)
    failures: list[Failure] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Failure:
    """An attempt the receiver did not answer with 2xx."""

    job_id: str
    url: str
    attempt: int
    problem: str
    retry_at: int | None  # None: that was the last attempt

    def log(self) -> None:
        """Said once the outcome is recorded (a retry logged is a retry scheduled)."""
        where = webhooks.redact(self.url)
        if self.retry_at is None:
            log.error(
                "webhook for job %s to %s failed %d times (%s); giving up",
                self.job_id,
                where,
                self.attempt,
                self.problem,
            )
        else:
            log.warning(
                "webhook for job %s to %s failed (%s); retrying", self.job_id, where, self.problem
            )


async def deliver_due(orch: LoopHost) -> int:
    """One turn of webhook delivery: claim what is due in every partition (one round trip),
    read those jobs (one more), POST them concurrently, and record every outcome (one
    more). Returns how many entries were claimed.

    A process killed between a POST and its record leaves the entry claimed: it falls due
    again when the claim runs out, and is delivered again (at least once), with the same
    attempt number in `X-Interlock-Delivery` since the attempt was not counted."""
    settings = orch.settings
    due = await orch.store.claim_webhooks(
        now_ms(), settings.webhook_batch, settings.webhook_claim_ms
    )
    if not due:
        return 0
    outcomes = WebhookOutcomes()

    async def deliver(entry: WebhookDue, doc: JobDoc, url: str) -> None:
        failure = await post(orch, entry.job_id, doc, url, entry.attempts + 1)
        outcomes.attempted.append(entry.member)
        if failure is None or failure.retry_at is None:
            outcomes.done.append(entry.member)
        else:
            outcomes.retry[entry.member] = failure.retry_at
        if failure is not None:
            outcomes.failures.append(failure)

    posts = []
    for entry in await orch.store.read_webhooks(due):
        url = entry.doc.get("webhook_url") if entry.doc is not None else None
        if entry.doc is None or not url or entry.doc.get("redrives", 0) > entry.end:
            # Gone, or an earlier end's entry: the job was redriven since, and its next end
            # has (or will have) an entry of its own.
            outcomes.done.append(entry.member)
        elif entry.doc["status"] in TERMINAL:
            posts.append(deliver(entry, entry.doc, str(url)))
        # Otherwise redriven before this went out: its next end queues it at once (until
        # then, it is looked at again when the claim runs out).
    await bounded(WEBHOOK_CONCURRENCY, posts)
    await orch.store.record_webhooks(outcomes.attempted, outcomes.done, outcomes.retry)
    for failure in outcomes.failures:
        failure.log()
    return len(due)


async def deliver_now(orch: LoopHost, doc: JobDoc) -> None:
    """The first attempt at the webhook of a job this orchestrator has just ended, made
    with the document it committed: no claim, no read. The commit held the outbox entry
    for `webhook_direct_ms` and counted the attempt; only the outcome is written (batched
    with the others that end meanwhile). Killed before that, the entry falls due when the
    hold runs out and any orchestrator's turn sends it again, as attempt 2."""
    job_id = doc["id"]
    failure = await post(orch, job_id, doc, str(doc["webhook_url"]), 1)
    try:
        await orch.store.webhook_outcome(job_id, failure.retry_at if failure else None)
    except StoreUnavailable as exc:
        log.warning("webhook for job %s: %s; it goes again later", job_id, exc)
        return
    if failure is not None:
        failure.log()


async def post(orch: LoopHost, job_id: str, doc: JobDoc, url: str, attempt: int) -> Failure | None:
    """POST attempt number `attempt` of the job's webhook: None when the receiver took it,
    else the failure, with when to try again (until that is recorded, the claim holds the
    entry)."""
    assert orch.webhook_sender is not None
    body, headers = webhooks.request(doc, orch.settings.webhook_secret, attempt)
    try:
        status = await orch.webhook_sender(url, body, headers)
        problem = f"HTTP {status}"
    except (OSError, TimeoutError) as exc:
        status, problem = 0, repr(exc)
    if 200 <= status < 300:
        return None
    last = attempt >= webhooks.MAX_ATTEMPTS
    retry_at = None if last else now_ms() + webhooks.backoff_ms(attempt)
    return Failure(job_id, url, attempt, problem, retry_at)


async def schedule_loop(orch: LoopHost) -> None:
    """Start the job of every schedule tick (see engine/runtime/schedules.py)."""
    last = datetime.now(UTC) - CATCH_UP
    first = True
    while True:
        checkpoint()
        now = datetime.now(UTC)
        await start_scheduled(orch, last, now, latest_only=first)
        last, first = now, False
        await asyncio.sleep(0.5)


async def start_scheduled(
    orch: LoopHost, after: datetime, until: datetime, *, latest_only: bool = False
) -> list[str]:
    """Create the job of every tick t with after < t <= until (with `latest_only`, of the
    latest tick only: a restarted loop catches up on one missed tick, not on every one).
    Returns the ids of the jobs this call created; a tick whose job exists already (another
    orchestrator was first) is left alone."""
    created_ids: list[str] = []
    for schedule in orch.schedules:
        blueprint = orch.registry.current(schedule.blueprint)
        if blueprint is None:
            continue
        ticks = schedule.ticks(after, until)
        if latest_only:
            ticks = ticks[-1:]
        for tick in ticks:
            try:
                created = await orch.create(
                    schedule.job_id(tick),
                    blueprint,
                    schedule.initial_data,
                    client=schedule.client,
                )
            except StoreUnavailable as exc:
                checkpoint(exc)
                log.warning("schedule %s: %s", schedule.name, exc)
                continue
            if created:
                created_ids.append(schedule.job_id(tick))
                log.info(
                    "schedule %s started job %s for %s",
                    schedule.name,
                    schedule.job_id(tick),
                    tick.isoformat(),
                )
    return created_ids
