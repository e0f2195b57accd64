"""The Redis client: connects (or embeds fakeredis for `memory://`) and runs the scripts.

Every multi-key change goes through one Lua script from `engine/store/lua/`; the rest are
single commands. Driver errors are translated into `StoreUnavailable` where they enter.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import redis.asyncio as aioredis
import redis.exceptions

from engine.errors import InterlockError
from engine.jsonutil import dumps, loads
from engine.store.keys import Keys

KEEP = "-"  # commit(timer_ms=KEEP) leaves the job's timer as it is


class StoreError(InterlockError):
    """The job store failed."""


class StoreUnavailable(StoreError):
    """Redis could not be reached or answered with an error."""


class PartitionMismatch(StoreError):
    """This Redis was set up with another partition count than the one configured."""


def _script(name: str) -> str:
    return resources.files("engine.store").joinpath("lua", name).read_text("utf-8")


@dataclass(slots=True)
class JobRecord:
    """A job as read from its hash: the document plus the lease fields Lua maintains."""

    version: int
    doc: dict[str, Any]
    task: str
    tstate: str
    worker: str
    leased_at: int


@dataclass(slots=True)
class Commit:
    """One guarded change of a job (see lua/commit.lua)."""

    job_id: str
    expected_version: int | None  # None: create; the job must not exist yet
    fields: dict[str, str]
    timer_ms: int | str | None = KEEP  # None removes the timer
    enqueue: tuple[str, str, float] | None = None  # (task type, member, score)
    dequeue: tuple[str, str] | None = None  # (task type, member)
    ttl_ms: int | None = None
    index: tuple[str, int] | None = None  # (client, created ms)
    done: bool = False
    history: list[dict[str, Any]] = field(default_factory=list)


class Store:
    def __init__(self, client: aioredis.Redis, keys: Keys, url: str) -> None:
        self.redis = client
        self.keys = keys
        self.url = url
        self._commit = client.register_script(_script("commit.lua"))
        self._lease = client.register_script(_script("lease.lua"))
        self._claim = client.register_script(_script("claim_timers.lua"))

    @classmethod
    async def connect(cls, url: str, *, prefix: str = "il", partitions: int = 8) -> Store:
        if url.startswith("memory://"):
            import fakeredis  # the embedded store: same scripts, in-process

            client: aioredis.Redis = fakeredis.FakeAsyncRedis(decode_responses=True)
        else:
            client = aioredis.Redis.from_url(
                url, decode_responses=True, health_check_interval=30, socket_keepalive=True
            )
        store = cls(client, Keys(prefix, partitions), url)
        await store._check_partitions()
        return store

    async def close(self) -> None:
        await self.redis.aclose()

    async def _check_partitions(self) -> None:
        try:
            await self.redis.hsetnx(self.keys.meta, "partitions", str(self.keys.partitions))
            stored = str(await self.redis.hget(self.keys.meta, "partitions"))
        except redis.exceptions.RedisError as exc:
            raise StoreUnavailable(f"cannot reach Redis at {self.url}: {exc}") from exc
        if stored != str(self.keys.partitions):
            raise PartitionMismatch(
                f"this Redis holds jobs in {stored} partitions but REDIS_PARTITIONS is "
                f"{self.keys.partitions}; use {stored}"
            )

    async def ping(self) -> bool:
        try:
            return bool(await self.redis.ping())
        except (redis.exceptions.RedisError, OSError):
            return False

    # -- jobs --------------------------------------------------------------------------------

    async def read_job(self, job_id: str) -> JobRecord | None:
        try:
            v, doc, task, tstate, worker, leased_at = await self.redis.hmget(
                self.keys.job(job_id), ["v", "doc", "task", "tstate", "worker", "leased_at"]
            )
        except redis.exceptions.RedisError as exc:
            raise StoreUnavailable(str(exc)) from exc
        if v is None or doc is None:
            return None
        return JobRecord(
            int(v),
            loads(doc),
            str(task or ""),
            str(tstate or ""),
            str(worker or ""),
            int(leased_at or 0),
        )

    async def commit(self, change: Commit, *, history_start: int) -> bool:
        """Apply `change` if the job's version still matches. History entries are stored as
        fields h:<seq> numbered from `history_start`."""
        keys = self.keys
        job_key = keys.job(change.job_id)
        partition = keys.partition(change.job_id)
        fields = dict(change.fields)
        for offset, event in enumerate(change.history):
            fields[f"h:{history_start + offset:08d}"] = dumps(event)
        flat: list[str] = []
        for name, value in fields.items():
            flat += [name, value]
        enqueue_key = keys.queue(partition, change.enqueue[0]) if change.enqueue else job_key
        dequeue_key = keys.queue(partition, change.dequeue[0]) if change.dequeue else job_key
        index_key = keys.client_jobs(partition, change.index[0]) if change.index else job_key
        timer = (
            KEEP
            if change.timer_ms == KEEP
            else ("" if change.timer_ms is None else str(change.timer_ms))
        )
        argv = [
            "" if change.expected_version is None else str(change.expected_version),
            str(len(fields)),
            *flat,
            timer,
            change.enqueue[1] if change.enqueue else "",
            repr(change.enqueue[2]) if change.enqueue else "",
            change.dequeue[1] if change.dequeue else "",
            str(change.ttl_ms) if change.ttl_ms else "",
            str(change.index[1]) if change.index else "",
            f"{change.enqueue[0]}|{partition}" if change.enqueue else "",
            keys.ready_channel,
            change.job_id if change.done else "",
            keys.done_channel,
            change.job_id,
        ]
        try:
            result = await self._commit(
                keys=[job_key, keys.timers(partition), enqueue_key, dequeue_key, index_key],
                args=argv,
            )
        except redis.exceptions.RedisError as exc:
            raise StoreUnavailable(str(exc)) from exc
        return bool(result)

    async def exists(self, job_id: str) -> bool:
        return bool(await self.redis.exists(self.keys.job(job_id)))

    async def drop_timer(self, job_id: str) -> None:
        """Forget the timer of a job that no longer exists (its retention ended)."""
        await self.redis.zrem(self.keys.timers(self.keys.partition(job_id)), job_id)

    async def history(self, job_id: str) -> list[dict[str, Any]]:
        try:
            raw = await self.redis.hgetall(self.keys.job(job_id))
        except redis.exceptions.RedisError as exc:
            raise StoreUnavailable(str(exc)) from exc
        names = sorted(str(n) for n in raw if str(n).startswith("h:"))
        return [loads(raw[name]) for name in names]

    async def job_ids_for_client(
        self, client: str, *, limit: int, before_ms: int | None
    ) -> list[tuple[str, int]]:
        """The client's newest job ids (with creation ms), newest first, across partitions."""
        top = "+inf" if before_ms is None else f"({before_ms}"
        pipe = self.redis.pipeline(transaction=False)
        for partition in range(self.keys.partitions):
            pipe.zrevrangebyscore(
                self.keys.client_jobs(partition, client),
                top,
                "-inf",
                start=0,
                num=limit,
                withscores=True,
            )
        try:
            rows = await pipe.execute()
        except redis.exceptions.RedisError as exc:
            raise StoreUnavailable(str(exc)) from exc
        merged = sorted(
            ((job_id, int(score)) for row in rows for job_id, score in row),
            key=lambda pair: (-pair[1], pair[0]),
        )
        return merged[:limit]

    async def forget_expired(self, client: str, older_than_ms: int) -> None:
        pipe = self.redis.pipeline(transaction=False)
        for partition in range(self.keys.partitions):
            pipe.zremrangebyscore(self.keys.client_jobs(partition, client), "-inf", older_than_ms)
        await pipe.execute()

    # -- tasks and timers ----------------------------------------------------------------------

    async def peek(self, partition: int, task_type: str, count: int) -> list[str]:
        try:
            members = await self.redis.zrange(self.keys.queue(partition, task_type), 0, count - 1)
        except redis.exceptions.RedisError as exc:
            raise StoreUnavailable(str(exc)) from exc
        return [str(m) for m in members]

    async def queue_sizes(self, pairs: Sequence[tuple[str, int]]) -> list[int]:
        pipe = self.redis.pipeline(transaction=False)
        for task_type, partition in pairs:
            pipe.zcard(self.keys.queue(partition, task_type))
        try:
            return [int(n) for n in await pipe.execute()]
        except redis.exceptions.RedisError as exc:
            raise StoreUnavailable(str(exc)) from exc

    async def lease(
        self,
        partition: int,
        task_type: str,
        candidates: Sequence[str],
        workers: Sequence[str],
        now_ms: int,
    ) -> list[tuple[str, str]]:
        """Lease candidates (queue members) to workers in order; returns (worker, payload)."""
        keys = [self.keys.queue(partition, task_type), self.keys.timers(partition)]
        keys += [self.keys.job(member.split("|", 1)[0]) for member in candidates]
        try:
            flat = await self._lease(
                keys=keys, args=[str(now_ms), str(len(candidates)), *candidates, *workers]
            )
        except redis.exceptions.RedisError as exc:
            raise StoreUnavailable(str(exc)) from exc
        return [(flat[i], flat[i + 1]) for i in range(0, len(flat), 2)]

    async def claim_timers(
        self, partition: int, now_ms: int, limit: int, claim_ms: int
    ) -> list[str]:
        try:
            due: list[str] = await self._claim(
                keys=[self.keys.timers(partition)], args=[str(now_ms), str(limit), str(claim_ms)]
            )
        except redis.exceptions.RedisError as exc:
            raise StoreUnavailable(str(exc)) from exc
        return due

    # -- workers -------------------------------------------------------------------------------

    async def register_worker(
        self, worker_id: str, registration: Mapping[str, Any], ttl_ms: int
    ) -> None:
        pipe = self.redis.pipeline(transaction=False)
        pipe.set(self.keys.worker(worker_id), dumps(registration), px=ttl_ms)
        pipe.set(self.keys.worker_alive(worker_id), dumps({"at": _ms(), "tasks": []}), px=ttl_ms)
        try:
            await pipe.execute()
        except redis.exceptions.RedisError as exc:
            raise StoreUnavailable(str(exc)) from exc

    async def heartbeat(
        self, worker_id: str, tasks: Sequence[str], alive_ms: int, registration_ms: int
    ) -> tuple[bool, list[str]]:
        """Record a heartbeat. Returns (worker known, task ids it should cancel)."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.pexpire(self.keys.worker(worker_id), registration_ms)
        pipe.set(
            self.keys.worker_alive(worker_id),
            dumps({"at": _ms(), "tasks": list(tasks)}),
            px=alive_ms,
        )
        pipe.spop(self.keys.worker_cancels(worker_id), 1000)
        try:
            known, _, cancels = await pipe.execute()
        except redis.exceptions.RedisError as exc:
            raise StoreUnavailable(str(exc)) from exc
        return bool(known), list(cancels or [])

    async def worker_registration(self, worker_id: str) -> dict[str, Any] | None:
        raw = await self.redis.get(self.keys.worker(worker_id))
        return loads(raw) if raw else None

    async def worker_alive(self, worker_id: str) -> dict[str, Any] | None:
        try:
            raw = await self.redis.get(self.keys.worker_alive(worker_id))
        except redis.exceptions.RedisError as exc:
            raise StoreUnavailable(str(exc)) from exc
        return loads(raw) if raw else None

    async def request_cancel(self, worker_id: str, task_id: str, ttl_ms: int) -> None:
        pipe = self.redis.pipeline(transaction=False)
        pipe.sadd(self.keys.worker_cancels(worker_id), task_id)
        pipe.pexpire(self.keys.worker_cancels(worker_id), ttl_ms)
        await pipe.execute()

    # -- blueprints and notifications -------------------------------------------------------------

    async def save_blueprint(self, content_hash: str, raw: Mapping[str, Any]) -> None:
        await self.redis.set(self.keys.blueprint(content_hash), dumps(raw), nx=True)

    async def load_blueprint(self, content_hash: str) -> dict[str, Any] | None:
        raw = await self.redis.get(self.keys.blueprint(content_hash))
        return loads(raw) if raw else None

    async def notifications(self) -> AsyncIterator[tuple[str, str] | None]:
        """(channel, message) for queued tasks and finished jobs, from every orchestrator;
        None after each second without one, so the consumer can check whether to stop."""
        pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
        await pubsub.subscribe(self.keys.ready_channel, self.keys.done_channel)
        try:
            while True:
                message = await pubsub.get_message(timeout=1.0)
                if message is not None and message.get("type") == "message":
                    yield str(message["channel"]), str(message["data"])
                else:
                    yield None
        finally:
            await pubsub.aclose()  # type: ignore[no-untyped-call]  # untyped in redis-py


def _ms() -> int:
    return int(time.time() * 1000)
