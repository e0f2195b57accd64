"""Webhook delivery in batches: a turn claims what is due in every partition, reads those
jobs and records every outcome in one round trip each, however many jobs ended at once."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis.asyncio.client import Pipeline

from engine.blueprint.loader import load_blueprints
from engine.clock import now_ms
from engine.runtime import background, webhooks
from engine.runtime.jobdoc import RuntimeSettings
from engine.runtime.orchestrator import Orchestrator, OrchestratorSettings
from engine.runtime.registry import Registry
from engine.store.client import Store, StoreUnavailable
from tests.engine.test_hot_path import command_calls, spent
from tests.engine.test_orchestrator import finished
from tests.engine.test_webhooks_schedules import SECRET, SET_ONLY

JOBS = 200
PARTITIONS = 4
URL = "http://receiver.test/hook"


class Receiver:
    """A webhook sender that answers in process: what arrived, and the status to answer."""

    def __init__(self) -> None:
        self.received: list[tuple[str, bytes, dict[str, str]]] = []
        self.status: dict[str, int] = {}  # job id -> status to answer (default 204)

    async def __call__(self, url: str, body: bytes, headers: Mapping[str, str]) -> int:
        await asyncio.sleep(0)  # an answer comes later, as over a network
        job_id = json.loads(body)["job_id"]
        self.received.append((url, body, dict(headers)))
        return self.status.get(job_id, 204)

    def deliveries(self, job_id: str) -> list[str]:
        return [h["X-Interlock-Delivery"] for _, b, h in self.received if job_id in str(b)]


@asynccontextmanager
async def ended_jobs(
    url: str, tmp_path: Path, count: int, claim_ms: int = 60_000
) -> AsyncIterator[tuple[Orchestrator, list[str]]]:
    """`count` jobs with a webhook that have ended (their deliveries wait in the outbox),
    and an orchestrator whose loops are stopped, to drive deliveries turn by turn."""
    folder = tmp_path / "bp"
    folder.mkdir(exist_ok=True)
    (folder / "tick.yaml").write_text(SET_ONLY)
    store = await Store.connect(url, partitions=PARTITIONS)
    settings = OrchestratorSettings(
        webhook_secret=SECRET, webhook_batch=JOBS, webhook_claim_ms=claim_ms
    )
    orch = Orchestrator(store, Registry(load_blueprints([folder]), RuntimeSettings()), settings)
    await orch.start()
    stopped = False
    try:
        blueprint = orch.registry.by_name["tick"]
        ids = await asyncio.gather(
            *(orch.submit(blueprint, {}, client="c", webhook_url=URL) for _ in range(count))
        )
        for job_id in ids:
            await finished(orch, job_id)
        await orch.stop()
        stopped = True
        yield orch, list(ids)
    finally:
        if not stopped:
            await orch.stop()
        await store.close()


def count_round_trips(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every round trip the Redis client makes from now on: a command sent alone, or a
    pipeline (sent as one write, answered together)."""
    trips: list[str] = []
    alone, piped = aioredis.Redis.execute_command, Pipeline.execute

    async def command(self: aioredis.Redis, *args: Any, **options: Any) -> Any:
        trips.append(str(args[0]))
        return await alone(self, *args, **options)  # type: ignore[no-untyped-call]

    async def pipeline(self: Pipeline, raise_on_error: bool = True) -> Any:
        trips.append(f"pipeline of {len(self.command_stack)}")
        return await piped(self, raise_on_error)

    monkeypatch.setattr(aioredis.Redis, "execute_command", command)
    monkeypatch.setattr(Pipeline, "execute", pipeline)
    return trips


async def test_200_jobs_ending_at_once_are_delivered_in_three_round_trips(
    store_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with ended_jobs(store_url, tmp_path, JOBS) as (orch, ids):
        store = orch.store
        assert len({store.keys.partition(job_id) for job_id in ids}) == PARTITIONS
        receiver = Receiver()
        orch.webhook_sender = receiver
        before = await command_calls(store_url) if store_url.startswith("redis") else {}
        trips = count_round_trips(monkeypatch)

        assert await background.deliver_due(orch) == JOBS

        monkeypatch.undo()
        # Claim, read, record: one round trip each for all 200 (it was 3 per job).
        assert len(trips) == 3, trips
        assert sorted(json.loads(body)["job_id"] for _, body, _ in receiver.received) == sorted(ids)
        for _, body, headers in receiver.received:
            assert webhooks.verify(SECRET, headers["X-Interlock-Signature"], body)
            assert headers["X-Interlock-Delivery"] == f"{json.loads(body)['job_id']}-1"
        if before:  # real Redis: count the commands too, Lua's own included
            used = spent(before, await command_calls(store_url))
            # Per job: the read (HMGET) and the attempt (HINCRBY); per partition: the claim's
            # ZRANGEBYSCORE and ZADD, the record's ZREM. One job at a time was over 4.
            assert used.get("hmget") == JOBS, used
            assert used.get("hincrby") == JOBS, used
            assert sum(used.values()) <= 2.1 * JOBS, used
        assert await background.deliver_due(orch) == 0  # all out of the outbox
        attempts = await store.read_webhooks(ids)
        assert {entry.attempts for entry in attempts} == {1}


async def test_a_turn_records_retries_give_ups_and_gone_jobs_together(
    store_url: str, tmp_path: Path
) -> None:
    async with ended_jobs(store_url, tmp_path, 6) as (orch, ids):
        store = orch.store
        ok, failing, unreachable, last_try, gone, redriven = ids
        receiver = Receiver()
        receiver.status = {failing: 500, last_try: 503}

        async def sender(url: str, body: bytes, headers: Mapping[str, str]) -> int:
            if json.loads(body)["job_id"] == unreachable:
                raise OSError("connection refused")
            return await receiver(url, body, headers)

        orch.webhook_sender = sender
        redis = store.redis
        await redis.hset(store.keys.job(last_try), "webhook_attempts", webhooks.MAX_ATTEMPTS - 1)
        await redis.delete(store.keys.job(gone))  # its retention ran out
        record = await store.read_job(redriven)
        assert record is not None
        doc = {**record.doc, "status": "running"}  # redriven before the webhook went out
        await redis.hset(store.keys.job(redriven), "doc", json.dumps(doc))
        started = now_ms()

        assert await background.deliver_due(orch) == 6

        sent = {json.loads(body)["job_id"] for _, body, _ in receiver.received}
        assert sent == {ok, failing, last_try}
        assert receiver.deliveries(last_try) == [f"{last_try}-{webhooks.MAX_ATTEMPTS}"]
        outbox: dict[str, float] = {}
        for partition in range(PARTITIONS):
            key = store.keys.webhooks(partition)
            rows = await redis.zrange(key, 0, -1, withscores=True)
            outbox.update((str(row[0]), float(row[1])) for row in rows)
        # Delivered, given up after the last attempt, gone: out. Failed: due again after the
        # first backoff. Redriven: left claimed (for its next end).
        assert set(outbox) == {failing, unreachable, redriven}
        first_backoff = webhooks.backoff_ms(1)
        for job_id in (failing, unreachable):
            assert started + first_backoff <= outbox[job_id] <= now_ms() + first_backoff
        assert outbox[redriven] >= started + orch.settings.webhook_claim_ms
        assert await redis.exists(store.keys.job(gone)) == 0  # no attempt count left behind
        counts = {e.job_id: e.attempts for e in await store.read_webhooks(ids)}
        assert counts == {
            ok: 1,
            failing: 1,
            unreachable: 1,
            last_try: webhooks.MAX_ATTEMPTS,
            gone: 0,
            redriven: 0,
        }


async def test_a_delivery_whose_record_was_lost_is_sent_again_with_the_same_id(
    store_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As when the orchestrator dies between the POST and the record: the claim runs out,
    the entry falls due again, and the receiver gets it once more (at least once)."""
    async with ended_jobs(store_url, tmp_path, 3, claim_ms=300) as (orch, ids):
        receiver = Receiver()
        orch.webhook_sender = receiver
        real = orch.store.record_webhooks

        async def lost(*args: Any) -> None:
            raise StoreUnavailable("Redis: connection lost")

        monkeypatch.setattr(orch.store, "record_webhooks", lost)
        with pytest.raises(StoreUnavailable):
            await background.deliver_due(orch)
        monkeypatch.setattr(orch.store, "record_webhooks", real)
        assert await background.deliver_due(orch) == 0  # still claimed
        for _ in range(100):  # the claim (300 ms) runs out
            if await background.deliver_due(orch):
                break
            await asyncio.sleep(0.05)
        for job_id in ids:
            assert receiver.deliveries(job_id) == [f"{job_id}-1", f"{job_id}-1"]
            bodies = [body for _, body, _ in receiver.received if job_id in str(body)]
            assert bodies[0] == bodies[1]  # the same notification again
        assert await background.deliver_due(orch) == 0


async def test_deliveries_across_a_clusters_masters(cluster_url: str, tmp_path: Path) -> None:
    """On Redis Cluster each partition is its own slot: the turn's claim, read and record
    go as one pipeline per master, and every job is delivered once."""
    async with ended_jobs(cluster_url, tmp_path, 60) as (orch, ids):
        receiver = Receiver()
        receiver.status = {ids[0]: 500}
        orch.webhook_sender = receiver
        assert await background.deliver_due(orch) == 60
        sent = sorted(json.loads(body)["job_id"] for _, body, _ in receiver.received)
        assert sent == sorted(ids)
        assert await background.deliver_due(orch) == 0  # delivered; the failed one not due
        counts = {e.job_id: e.attempts for e in await orch.store.read_webhooks(ids)}
        assert set(counts.values()) == {1}
        partition = orch.store.keys.partition(ids[0])
        waiting = await orch.store.redis.zrange(orch.store.keys.webhooks(partition), 0, -1)
        assert waiting == [ids[0]]


@asynccontextmanager
async def delivering(
    url: str, tmp_path: Path, sender: webhooks.Sender, direct_ms: int = 15_000
) -> AsyncIterator[Orchestrator]:
    """A started orchestrator that delivers webhooks with `sender`."""
    folder = tmp_path / f"bp{id(sender)}"
    folder.mkdir(exist_ok=True)
    (folder / "tick.yaml").write_text(SET_ONLY)
    store = await Store.connect(url, partitions=PARTITIONS)
    settings = OrchestratorSettings(webhook_secret=SECRET, webhook_direct_ms=direct_ms)
    registry = Registry(load_blueprints([folder]), RuntimeSettings())
    orch = Orchestrator(store, registry, settings, webhook_sender=sender)
    await orch.start()
    try:
        yield orch
    finally:
        if orch._tasks:  # (not stopped by the test already)
            await orch.stop()
        await store.close()


async def until(check: Any, what: str, seconds: float = 10) -> None:
    for _ in range(int(seconds * 20)):
        if await check():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"not in time: {what}")


async def test_the_orchestrator_that_ends_a_job_sends_its_webhook_without_reading_it(
    store_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    receiver = Receiver()
    async with delivering(store_url, tmp_path, receiver) as orch:
        store = orch.store
        read: list[str] = []
        real_read = store.read_webhooks

        async def reading(job_ids: Any) -> Any:
            read.extend(job_ids)
            return await real_read(job_ids)

        monkeypatch.setattr(store, "read_webhooks", reading)
        blueprint = orch.registry.by_name["tick"]
        ids = [await orch.submit(blueprint, {}, client="c", webhook_url=URL) for _ in range(20)]

        async def delivered() -> bool:
            return len(receiver.received) == len(ids)

        await until(delivered, "every webhook delivered")
        for job_id in ids:
            assert receiver.deliveries(job_id) == [f"{job_id}-1"]

        async def outbox_empty() -> bool:
            sizes = [await store.redis.zcard(store.keys.webhooks(p)) for p in range(PARTITIONS)]
            return sum(sizes) == 0

        await until(outbox_empty, "every delivery recorded")
        assert read == []  # no turn had to claim or read any of them
        counts = {e.job_id: e.attempts for e in await real_read(ids)}
        assert set(counts.values()) == {1}


async def test_a_first_webhook_whose_sender_died_goes_out_from_the_outbox(
    redis_url: str, tmp_path: Path
) -> None:
    """The orchestrator that ended the job dies during its POST (nothing recorded): once its
    hold on the outbox entry runs out, another orchestrator sends the webhook as attempt 2."""
    stuck = asyncio.Event()
    tried: list[bytes] = []

    async def dying(url: str, body: bytes, headers: Mapping[str, str]) -> int:
        tried.append(body)
        stuck.set()
        await asyncio.Event().wait()  # never answers: cancelled below, as by a SIGKILL
        raise AssertionError("unreachable")

    receiver = Receiver()
    async with delivering(redis_url, tmp_path, dying, direct_ms=3000) as doomed:
        blueprint = doomed.registry.by_name["tick"]
        job_id = await doomed.submit(blueprint, {}, client="c", webhook_url=URL)
        await asyncio.wait_for(stuck.wait(), 10)
        for task in list(doomed._followups):  # the process dies: its POST never ends,
            task.cancel()
        await doomed.stop()  # and its loops stop (well before its 3 s hold runs out)
        async with delivering(redis_url, tmp_path, receiver):

            async def delivered() -> bool:
                return bool(receiver.received)

            await until(delivered, "the webhook sent by the other orchestrator", 20)
    assert receiver.deliveries(job_id) == [f"{job_id}-2"]
    assert receiver.received[0][1] == tried[0]  # the same notification again
