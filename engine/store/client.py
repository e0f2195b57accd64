"""The Redis client: connects (or embeds fakeredis for `memory://`) and runs the scripts.

Every multi-key change goes through one Lua script from `engine/store/lua/`; the rest are
single commands. Driver errors are translated into `StoreUnavailable` where they enter.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, Generic, ParamSpec, TypeVar
from urllib.parse import urlsplit, urlunsplit

import redis.asyncio as aioredis
import redis.exceptions
from redis.commands.core import AsyncScript

from engine.errors import InterlockError
from engine.jsonutil import dumps, loads
from engine.store.keys import Keys

P = ParamSpec("P")
R = TypeVar("R")
Item = TypeVar("Item")
Outcome = TypeVar("Outcome")

MAX_CONNECTIONS = 10  # per orchestrator process, pub/sub subscription included
MAX_BATCH = 500  # job changes (or heartbeats) in one round trip

KEEP = "-"  # commit(timer_ms=KEEP) leaves the job's timer as it is

# Called after each batched round trip: (operation, items in the batch, seconds taken).
# The metrics hang here (server/metrics.py); it must be quick and must not raise.
StoreTiming = Callable[[str, int, float], None]


class StoreError(InterlockError):
    """The job store failed."""


class StoreUnavailable(StoreError):
    """Redis could not be reached or answered with an error."""


class PartitionMismatch(StoreError):
    """This Redis was set up with another partition count than the one configured."""


def translated(method: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
    """Turn driver errors into StoreUnavailable where they enter the package."""

    @functools.wraps(method)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return await method(*args, **kwargs)
        except redis.exceptions.RedisError as exc:
            raise StoreUnavailable(f"Redis: {exc}") from exc

    return wrapper


def redact(url: str) -> str:
    """The URL with any password replaced by ***, for messages and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def _script(name: str) -> str:
    return resources.files("engine.store").joinpath("lua", name).read_text("utf-8")


@dataclass(slots=True)
class JobRecord:
    """A job as read: its version, document, and the raw lease of each active task."""

    version: int
    doc: dict[str, Any]
    leases: dict[str, str]


@dataclass(frozen=True, slots=True)
class Leased:
    """A task the dispatcher leased: to whom, its payload JSON, and the job's new state."""

    worker: str
    payload: str
    job_id: str
    task_id: str
    version: int  # of the job, after the lease
    lease: str  # the task's lease as stored


@dataclass(frozen=True, slots=True)
class LeaseBatch:
    """Queued tasks of one queue to lease: members `job_id|task_id`, and the worker to serve
    with each lease made, in order."""

    partition: int
    task_type: str
    candidates: Sequence[str]
    workers: Sequence[str]


@dataclass(slots=True)
class Commit:
    """One guarded change of a job (see lua/commit.lua)."""

    job_id: str
    expected_version: int | None  # None: create; the job must not exist yet
    fields: dict[str, str]
    timer_ms: int | str | None = KEEP  # None removes the timer
    payloads: dict[str, str] = field(default_factory=dict)  # task id -> payload JSON
    drop: list[str] = field(default_factory=list)  # task ids no longer active (payloads go)
    enqueue: list[tuple[str, str, float]] = field(default_factory=list)  # (type, member, score)
    dequeue: list[tuple[str, str]] = field(default_factory=list)  # (type, member)
    ttl_ms: int | None = None
    index: tuple[str, int] | None = None  # (client, created ms)
    # Since when (ms) the job waits for a person; None: it does not (see keys.humans).
    human_ms: int | None = None
    webhook_ms: int | None = None
    done: bool = False
    history: list[dict[str, Any]] = field(default_factory=list)


class Batcher(Generic[Item, Outcome]):
    """Natural batching: the first item goes to Redis at once; items that arrive while a
    batch is on its way wait for it and then go together (at most `limit`). Nothing waits
    when calls come one at a time; under load a batch costs one round trip instead of one
    per item. `run` answers each item with its result or the exception it met."""

    def __init__(
        self, run: Callable[[list[Item]], Awaitable[Sequence[Outcome | Exception]]], limit: int
    ):
        self._run = run
        self._limit = limit
        self._items: list[tuple[Item, asyncio.Future[Outcome]]] = []
        self._flusher: asyncio.Task[None] | None = None

    async def submit(self, item: Item) -> Outcome:
        future: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        self._items.append((item, future))
        if self._flusher is None:
            self._flusher = asyncio.create_task(self._flush())
        return await future

    async def close(self) -> None:
        if self._flusher is not None:
            await asyncio.wait([self._flusher], timeout=5)

    async def _flush(self) -> None:
        try:
            while self._items:
                batch = self._items[: self._limit]
                del self._items[: self._limit]
                try:
                    outcomes = await self._run([item for item, _ in batch])
                except Exception as exc:
                    outcomes = [exc] * len(batch)
                except BaseException:  # cancelled: the outcome is unknown, as for any call
                    for _, future in batch:
                        future.cancel()
                    raise
                for (_, future), outcome in zip(batch, outcomes, strict=True):
                    if future.done():
                        continue
                    if isinstance(outcome, redis.exceptions.RedisError):
                        future.set_exception(StoreUnavailable(f"Redis: {outcome}"))
                    elif isinstance(outcome, Exception):
                        future.set_exception(outcome)
                    else:
                        future.set_result(outcome)
        finally:
            self._flusher = None
            if self._items:  # arrived while we were cancelled: never strand them
                self._flusher = asyncio.create_task(self._flush())


class Store:
    def __init__(self, client: aioredis.Redis, keys: Keys, url: str) -> None:
        self.redis = client
        self.keys = keys
        self.url = url
        self._commit = client.register_script(_script("commit.lua"))
        self._lease = client.register_script(_script("lease.lua"))
        self._claim = client.register_script(_script("claim_timers.lua"))
        self._commits = Batcher(self._commit_batch, MAX_BATCH)
        self._heartbeats = Batcher(self._heartbeat_batch, MAX_BATCH)
        self.timing: StoreTiming | None = None

    @classmethod
    async def connect(cls, url: str, *, prefix: str = "il", partitions: int = 8) -> Store:
        if url.startswith("memory://"):
            import fakeredis  # the embedded store: same scripts, in-process

            client: aioredis.Redis = fakeredis.FakeAsyncRedis(decode_responses=True)
        else:
            # A bounded pool that waits for a free connection (redis-py's default pool fails
            # with "Too many connections" instead): bursts of heartbeats queue, not fail.
            pool = aioredis.BlockingConnectionPool.from_url(
                url,
                decode_responses=True,
                health_check_interval=30,
                socket_keepalive=True,
                max_connections=MAX_CONNECTIONS,
                timeout=10,
            )
            client = aioredis.Redis(connection_pool=pool)
        store = cls(client, Keys(prefix, partitions), url)
        try:
            await store._check_partitions()
        except BaseException:
            await client.aclose(close_connection_pool=True)
            raise
        return store

    async def close(self) -> None:
        await self._commits.close()
        await self._heartbeats.close()
        await self.redis.aclose(close_connection_pool=True)

    async def _check_partitions(self) -> None:
        try:
            await self.redis.hsetnx(self.keys.meta, "partitions", str(self.keys.partitions))
            stored = str(await self.redis.hget(self.keys.meta, "partitions"))
        except redis.exceptions.RedisError as exc:
            raise StoreUnavailable(f"cannot reach Redis at {redact(self.url)}: {exc}") from exc
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

    @translated
    async def read_job(self, job_id: str) -> JobRecord | None:
        v, doc, leases = await self.redis.hmget(self.keys.job(job_id), ["v", "doc", "leases"])
        if v is None or doc is None:
            return None
        return JobRecord(int(v), loads(doc), loads(leases) if leases else {})

    async def commit(self, change: Commit, *, history_start: int) -> bool:
        """Apply `change` if the job's version still matches. History entries are stored as
        fields h:<seq> numbered from `history_start`.

        Changes are group-committed (see `Batcher`): one script per partition for the
        changes that queued up meanwhile, all partitions in one round trip."""
        return await self._commits.submit((change, history_start))

    async def _commit_batch(self, items: list[tuple[Commit, int]]) -> list[bool | Exception]:
        started = time.perf_counter()
        try:
            return await self._commit_batch_timed(items)
        finally:
            if self.timing is not None:
                self.timing("commit", len(items), time.perf_counter() - started)

    async def _commit_batch_timed(self, items: list[tuple[Commit, int]]) -> list[bool | Exception]:
        by_partition: dict[int, list[int]] = {}  # partition -> positions in items
        for position, (change, _) in enumerate(items):
            by_partition.setdefault(self.keys.partition(change.job_id), []).append(position)
        calls = [
            self._batch_call(partition, [items[i] for i in positions])
            for partition, positions in by_partition.items()
        ]
        answers = await self._run_scripts(self._commit, calls)
        outcomes: list[bool | Exception] = [False] * len(items)
        for positions, answer in zip(by_partition.values(), answers, strict=True):
            for offset, position in enumerate(positions):
                outcomes[position] = (
                    answer if isinstance(answer, Exception) else bool(answer[offset])
                )
        return outcomes

    async def _run_scripts(
        self, script: AsyncScript, calls: Sequence[tuple[list[str], list[str]]]
    ) -> list[Any]:
        """Run `script` once per (KEYS, ARGV), all in one round trip; each call's answer, or
        the Redis error it met. A Redis that lost its scripts (a restart) gets them again."""
        if len(calls) == 1:
            try:
                return [await script(keys=calls[0][0], args=calls[0][1])]
            except redis.exceptions.RedisError as exc:
                return [exc]
        pipe = self.redis.pipeline(transaction=False)
        for keys, args in calls:
            pipe.evalsha(script.sha, len(keys), *keys, *args)
        answers: list[Any] = await pipe.execute(raise_on_error=False)
        for i, (keys, args) in enumerate(calls):
            if isinstance(answers[i], redis.exceptions.NoScriptError):
                try:
                    answers[i] = await script(keys=keys, args=args)  # loads it, runs it
                except redis.exceptions.RedisError as exc:
                    answers[i] = exc
        return answers

    def _batch_call(
        self, partition: int, changes: list[tuple[Commit, int]]
    ) -> tuple[list[str], list[str]]:
        """KEYS and ARGV of commit.lua for changes of one partition."""
        keys = self.keys
        key_list: list[str] = []
        index: dict[str, int] = {}

        def key(name: str) -> int:
            if name not in index:
                key_list.append(name)
                index[name] = len(key_list)  # Lua indexes KEYS from 1
            return index[name]

        timers = key(keys.timers(partition))
        webhooks = key(keys.webhooks(partition))
        humans = key(keys.humans(partition))
        plans = []
        for change, history_start in changes:
            job_id = change.job_id
            expected = change.expected_version
            fields = dict(change.fields)
            for offset, event in enumerate(change.history):
                fields[f"h:{history_start + offset:08d}"] = dumps(event)
            for task_id, payload in change.payloads.items():
                fields[f"p:{task_id}"] = payload
            flat = [item for pair in fields.items() for item in pair]
            if change.timer_ms == KEEP or (change.timer_ms is None and expected is None):
                timer: str | bool = "keep"  # (a job being created has no timer to remove)
            elif change.timer_ms is None:
                timer = False
            else:
                timer = str(change.timer_ms)
            plans.append(
                {
                    "key": key(keys.job(job_id)),
                    "id": job_id,
                    "expect": "" if expected is None else str(expected),
                    "fields": flat,
                    # A finished job's hash expires whole: no need to delete its fields.
                    "hdel": [] if change.ttl_ms else [f"p:{t}" for t in change.drop],
                    "enqueue": [
                        [key(keys.queue(partition, t)), repr(score), m]
                        for t, m, score in change.enqueue
                    ],
                    "dequeue": [[key(keys.queue(partition, t)), m] for t, m in change.dequeue],
                    "timers": timers,
                    "timer": timer,
                    "index": (
                        [key(keys.client_jobs(partition, change.index[0])), str(change.index[1])]
                        if change.index
                        else False
                    ),
                    "webhooks": webhooks,
                    "webhook": str(change.webhook_ms) if change.webhook_ms is not None else False,
                    "humans": humans,
                    "human": str(change.human_ms) if change.human_ms is not None else False,
                    "ttl": str(change.ttl_ms) if change.ttl_ms else False,
                    "ready": sorted({f"{t}|{partition}" for t, _, _ in change.enqueue}),
                    "done": change.done,
                }
            )
        argument = {
            "plans": plans,
            "ready_channel": keys.ready_channel,
            "done_channel": keys.done_channel,
        }
        return key_list, [dumps(argument)]

    @translated
    async def exists(self, job_id: str) -> bool:
        return bool(await self.redis.exists(self.keys.job(job_id)))

    @translated
    async def drop_timer(self, job_id: str) -> None:
        """Forget the timer of a job that no longer exists (its retention ended)."""
        await self.redis.zrem(self.keys.timers(self.keys.partition(job_id)), job_id)

    @translated
    async def history(self, job_id: str) -> list[dict[str, Any]]:
        raw = await self.redis.hgetall(self.keys.job(job_id))
        names = sorted(str(n) for n in raw if str(n).startswith("h:"))
        events = [loads(raw[name]) for name in names]
        # A pick-up is recorded with the result, stamped with the earlier lease time: order
        # by time, keeping the recorded order for equal times (sorted() is stable).
        return sorted(events, key=lambda event: int(event.get("at", 0)))

    @translated
    async def job_ids_for_client(
        self, client: str, *, limit: int, after: tuple[int, str] | None
    ) -> list[tuple[str, int]]:
        """The client's job ids with their creation ms, newest first (ties: larger id first),
        across partitions; `after` is the (ms, id) the previous page ended with."""
        top = "+inf" if after is None else str(after[0])
        pipe = self.redis.pipeline(transaction=False)
        for partition in range(self.keys.partitions):
            pipe.zrevrangebyscore(
                self.keys.client_jobs(partition, client),
                top,
                "-inf",
                start=0,
                num=limit + 64,
                withscores=True,
            )
        rows = await pipe.execute()
        found = [(str(job_id), int(score)) for row in rows for job_id, score in row]
        if after is not None:  # keep what sorts strictly after the cursor
            found = [(j, ms) for j, ms in found if (ms, j) < (after[0], after[1])]
        found.sort(key=lambda pair: (pair[1], pair[0]), reverse=True)
        return found[:limit]

    @translated
    async def read_docs(self, job_ids: Sequence[str]) -> list[dict[str, Any] | None]:
        """The documents of several jobs in one round trip (None for a job that is gone)."""
        pipe = self.redis.pipeline(transaction=False)
        for job_id in job_ids:
            pipe.hget(self.keys.job(job_id), "doc")
        return [loads(raw) if raw else None for raw in await pipe.execute()]

    # -- tasks and timers ----------------------------------------------------------------------

    @translated
    async def peek_many(self, asks: Sequence[tuple[str, int, int]]) -> list[list[str]]:
        """The first `count` members of several queues (task type, partition, count), in
        one round trip."""
        pipe = self.redis.pipeline(transaction=False)
        for task_type, partition, count in asks:
            pipe.zrange(self.keys.queue(partition, task_type), 0, count - 1)
        return [[str(m) for m in members] for members in await pipe.execute()]

    @translated
    async def lease(self, batches: Sequence[LeaseBatch], now_ms: int) -> list[list[Leased]]:
        """For each batch (one queue), lease its candidates to its workers in order; the
        leases made, batch by batch. All batches go in one round trip."""
        calls = []
        for batch in batches:
            keys = [self.keys.queue(batch.partition, batch.task_type)]
            keys.append(self.keys.timers(batch.partition))
            keys += [self.keys.job(member.split("|", 1)[0]) for member in batch.candidates]
            args = [str(now_ms), str(len(batch.candidates)), *batch.candidates, *batch.workers]
            calls.append((keys, args))
        made: list[list[Leased]] = []
        started = time.perf_counter()
        answers = await self._run_scripts(self._lease, calls)
        if self.timing is not None:
            self.timing("lease", len(calls), time.perf_counter() - started)
        for answer in answers:
            if isinstance(answer, Exception):
                raise answer
            made.append(
                [
                    Leased(
                        answer[i],
                        answer[i + 1],
                        answer[i + 2],
                        answer[i + 3],
                        int(answer[i + 4]),
                        answer[i + 5],
                    )
                    for i in range(0, len(answer), 6)
                ]
            )
        return made

    @translated
    async def claim_timers(
        self, partition: int, now_ms: int, limit: int, claim_ms: int
    ) -> list[str]:
        """Job ids whose timer is due, claimed for `claim_ms` so one orchestrator handles each."""
        return await self._claim_due(self.keys.timers(partition), now_ms, limit, claim_ms)

    @translated
    async def claim_webhooks(
        self, partition: int, now_ms: int, limit: int, claim_ms: int
    ) -> list[str]:
        """Job ids whose webhook delivery is due, claimed likewise."""
        return await self._claim_due(self.keys.webhooks(partition), now_ms, limit, claim_ms)

    @translated
    async def _claim_due(self, key: str, now_ms: int, limit: int, claim_ms: int) -> list[str]:
        due: list[str] = await self._claim(
            keys=[key], args=[str(now_ms), str(limit), str(claim_ms)]
        )
        return due

    @translated
    async def webhook_attempt(self, job_id: str) -> int:
        """Count one more delivery attempt for the job's webhook; returns the count."""
        return int(await self.redis.hincrby(self.keys.job(job_id), "webhook_attempts", 1))

    @translated
    async def webhook_delivered(self, job_id: str) -> None:
        await self.redis.zrem(self.keys.webhooks(self.keys.partition(job_id)), job_id)

    @translated
    async def webhook_retry(self, job_id: str, at_ms: int) -> None:
        await self.redis.zadd(self.keys.webhooks(self.keys.partition(job_id)), {job_id: at_ms})

    # -- workers -------------------------------------------------------------------------------

    @translated
    async def register_worker(
        self, worker_id: str, registration: Mapping[str, Any], ttl_ms: int
    ) -> None:
        pipe = self.redis.pipeline(transaction=False)
        now = _ms()
        pipe.set(self.keys.worker(worker_id), dumps(registration), px=ttl_ms)
        pipe.set(self.keys.worker_alive(worker_id), dumps({"at": now, "tasks": []}), px=ttl_ms)
        for skill in registration.get("skills") or ():
            key = self.keys.skill_workers(str(skill))
            pipe.zadd(key, {worker_id: now})
            # Forget workers silent for longer than a registration lives: the set stays
            # as large as the workers of the last `ttl_ms`, not of all time.
            pipe.zremrangebyscore(key, "-inf", now - ttl_ms)
        await pipe.execute()

    async def heartbeat(
        self,
        worker_id: str,
        tasks: Sequence[str],
        alive_ms: int,
        registration_ms: int,
        skills: Sequence[str] = (),
    ) -> tuple[bool, list[str]]:
        """Record a heartbeat. Returns (worker known, task ids it should cancel). Heartbeats
        are batched like commits: 1,000 workers' heartbeats take one connection, not 100.
        `skills` (the worker's task types) are marked seen now (see `keys.skill_workers`)."""
        item = (worker_id, list(tasks), alive_ms, registration_ms, tuple(skills))
        return await self._heartbeats.submit(item)

    async def _heartbeat_batch(
        self, beats: list[tuple[str, list[str], int, int, tuple[str, ...]]]
    ) -> list[tuple[bool, list[str]] | Exception]:
        started = time.perf_counter()
        pipe = self.redis.pipeline(transaction=False)
        now = _ms()
        for worker_id, tasks, alive_ms, registration_ms, _ in beats:
            pipe.pexpire(self.keys.worker(worker_id), registration_ms)
            pipe.set(
                self.keys.worker_alive(worker_id), dumps({"at": now, "tasks": tasks}), px=alive_ms
            )
            pipe.spop(self.keys.worker_cancels(worker_id), 1000)
        # After the per-worker commands, so that answers[3 * i ...] stay each worker's own.
        for worker_id, _, _, _, skills in beats:
            for skill in skills:
                pipe.zadd(self.keys.skill_workers(skill), {worker_id: now})
        answers = await pipe.execute(raise_on_error=False)
        if self.timing is not None:
            self.timing("heartbeat", len(beats), time.perf_counter() - started)
        outcomes: list[tuple[bool, list[str]] | Exception] = []
        for i in range(0, 3 * len(beats), 3):
            known, stored, cancels = answers[i : i + 3]
            failed = next((a for a in (known, stored, cancels) if isinstance(a, Exception)), None)
            outcomes.append(failed or (bool(known), list(cancels or [])))
        return outcomes

    @translated
    async def worker_registration(self, worker_id: str) -> dict[str, Any] | None:
        raw = await self.redis.get(self.keys.worker(worker_id))
        return loads(raw) if raw else None

    @translated
    async def worker_alive(self, worker_id: str) -> dict[str, Any] | None:
        raw = await self.redis.get(self.keys.worker_alive(worker_id))
        return loads(raw) if raw else None

    @translated
    async def request_cancel(self, worker_id: str, task_id: str, ttl_ms: int) -> None:
        pipe = self.redis.pipeline(transaction=False)
        pipe.sadd(self.keys.worker_cancels(worker_id), task_id)
        pipe.pexpire(self.keys.worker_cancels(worker_id), ttl_ms)
        await pipe.execute()

    # -- blueprints and notifications -------------------------------------------------------------

    @translated
    async def save_blueprint(self, content_hash: str, raw: Mapping[str, Any]) -> None:
        await self.redis.set(self.keys.blueprint(content_hash), dumps(raw), nx=True)

    @translated
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
