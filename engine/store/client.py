"""The Redis client: connects (or embeds fakeredis for `memory://`) and runs the scripts.

Every multi-key change goes through one Lua script from `engine/store/lua/`; the rest are
single commands. Driver errors are translated into `StoreUnavailable` where they enter.
"""

from __future__ import annotations

import asyncio
import functools
import os
import time
import traceback
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, Generic, ParamSpec, TypeVar
from urllib.parse import urlsplit, urlunsplit

import redis.asyncio as aioredis
import redis.exceptions
from redis.asyncio.cluster import RedisCluster
from redis.commands.core import AsyncScript

from engine.clock import now_ms
from engine.jsonutil import dumps, loads
from engine.runtime import outputs
from engine.runtime.jobdoc import BranchData, JobDoc
from engine.runtime.outputs import Kept
from engine.store import cluster
from engine.store.apart import LEGACY_LEASES, fields_of, lease_field, task_field, unpack
from engine.store.changes import Changes
from engine.store.errors import PartitionMismatch, StoreConfigError, StoreError, StoreUnavailable
from engine.store.keys import (
    CLUSTER_PARTITIONS,
    DEFAULT_PARTITIONS,
    Keys,
    attempts_field,
    outbox_member,
    parse_member,
)

__all__ = ["PartitionMismatch", "StoreConfigError", "StoreError", "StoreUnavailable"]

P = ParamSpec("P")
R = TypeVar("R")
Item = TypeVar("Item")
Outcome = TypeVar("Outcome")

MAX_CONNECTIONS = 10  # per orchestrator process, pub/sub subscription included
MAX_BATCH = 500  # job changes (or heartbeats) in one round trip
# A change writing more values than this runs in a script call of its own (in the same round
# trip), so that whatever a very large change meets can never fail its batch neighbours.
LARGE_CHANGE = 2000

KEEP = "-"  # commit(timer_ms=KEEP) leaves the job's timer as it is

# What the driver raises: RedisError, and on Redis Cluster also RedisClusterException (not a
# RedisError), e.g. SlotNotCoveredError while a failover is still under way.
DRIVER_ERRORS = (redis.exceptions.RedisError, redis.exceptions.RedisClusterException)

# Called after each batched round trip: (operation, items in the batch, seconds taken).
# The metrics hang here (server/metrics.py); it must be quick and must not raise.
StoreTiming = Callable[[str, int, float], None]


def driver_error(exc: BaseException) -> bool:
    """Whether `exc` is the store failing (not a bug of ours). Besides DRIVER_ERRORS: redis-py's
    cluster client closes every connection it holds on some errors (CLUSTERDOWN, a failed
    pipeline), and a command using one of them at that moment fails with whatever the
    transport raises (AttributeError, RuntimeError "handler is closed" under uvloop, see
    redis/redis-py#4287) instead of a ConnectionError. Those count when they come from
    inside redis-py's asyncio connection code."""
    if isinstance(exc, DRIVER_ERRORS):
        return True
    if not isinstance(exc, (AttributeError, RuntimeError, TypeError)):
        return False
    frames = traceback.extract_tb(exc.__traceback__)
    return bool(frames) and any(f"redis{os.sep}asyncio" in frame.filename for frame in frames)


def translated(method: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
    """Turn driver errors into StoreUnavailable where they enter the package."""

    @functools.wraps(method)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return await method(*args, **kwargs)
        except StoreError:
            raise
        except Exception as exc:
            if not driver_error(exc):
                raise
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
    doc: JobDoc
    leases: dict[str, str]
    # What was read of a parallel state's stored items and results (the orchestrator reads
    # what a rule needs; see engine/runtime/parallel.py).
    branch: BranchData = field(default_factory=BranchData)
    # Whether the job's initial_data is stored apart from its document (field `input`,
    # written once); False for a job written before it was, which keeps it in `doc`.
    input_apart: bool = False
    # The step outputs the document refers to (fields o:<n>, see engine/runtime/outputs.py).
    kept: Kept = field(default_factory=Kept)
    # Whether its active tasks are stored apart (engine/store/apart.py), and their records
    # as read: the very objects in `doc["tasks"]` (a rule replaces a record it changes, never
    # changes it in place), so that a change writes only the tasks it replaced or started.
    tasks_apart: bool = False
    tasks_read: Mapping[str, Any] = field(default_factory=dict)


def with_input(doc: Any, given: str | None) -> Any:
    """The document as read, with its initial_data put back from the `input` field."""
    if given is not None:
        doc["initial_data"] = loads(given)
    return doc


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


@dataclass(frozen=True, slots=True)
class WebhookDue:
    """A claimed webhook delivery as read: the job's document (None once the job is gone)
    and the delivery attempts recorded so far for the job's end number `end`."""

    job_id: str
    doc: JobDoc | None
    attempts: int
    end: int = 0

    @property
    def member(self) -> str:
        """Its entry in the outbox (see keys.outbox_member)."""
        return outbox_member(self.job_id, self.end)


# A concurrency key's counters live on this long after its last use (every waiting job's
# periodic check touches them; the sets of jobs never expire, see lua/slots.lua).
SLOT_KEYS_TTL_MS = 7 * 86_400_000


@dataclass(frozen=True, slots=True)
class Slot:
    """Where a job stands at its concurrency key after `Store.slot`: `where` is "run"
    (admitted: `number` is its admission number), "wait" (`number`: its 0-based place in
    line) or "gone"; `admitted` lists (member, admission number) of the jobs to start."""

    where: str
    number: int
    admitted: list[tuple[str, int]]


@dataclass(slots=True)
class Commit:
    """One guarded change of a job (see lua/commit.lua)."""

    job_id: str
    expected_version: int | None  # None: create; the job must not exist yet
    fields: dict[str, str]
    timer_ms: int | str | None = KEEP  # None removes the timer
    # timer_ms only brings the timer forward (ZADD LT); None then leaves it as it is.
    timer_lower: bool = False
    payloads: dict[str, str] = field(default_factory=dict)  # task id -> payload JSON
    drop: list[str] = field(default_factory=list)  # task ids no longer active (payloads go)
    blank: list[str] = field(default_factory=list)  # ended tasks: fields written as "" instead
    enqueue: list[tuple[str, str, float]] = field(default_factory=list)  # (type, member, score)
    dequeue: list[tuple[str, str]] = field(default_factory=list)  # (type, member)
    ttl_ms: int | None = None
    persist: bool = False  # the job ended and runs again: it no longer expires
    index: tuple[str, int] | None = None  # (client, created ms)
    labels: Mapping[str, str] | None = None  # indexed with `index` (the job's creation)
    # Since when (ms) the job waits for a person; None: it does not (see keys.humans).
    human_ms: int | None = None
    webhook_ms: int | None = None
    webhook_end: int = 0  # which end of the job the webhook is for (keys.outbox_member)
    done: bool = False
    history: list[dict[str, Any]] = field(default_factory=list)
    drop_fields: list[str] = field(default_factory=list)  # job hash fields to delete
    # A parallel state's branch state (JSON by branch index), see Keys.job: fields i:<n> and
    # r:<n>; `drop_branches` deletes those of branches 0 .. n-1.
    branch_items: dict[int, str] = field(default_factory=dict)
    branch_results: dict[int, str] = field(default_factory=dict)
    drop_branches: int = 0
    drop_outputs: list[int] = field(default_factory=list)  # output fields o:<n> to delete


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
                    if isinstance(outcome, Exception) and driver_error(outcome):
                        future.set_exception(StoreUnavailable(f"Redis: {outcome}"))
                    elif isinstance(outcome, Exception):
                        future.set_exception(outcome)
                    else:
                        future.set_result(outcome)
        finally:
            self._flusher = None
            if self._items:  # arrived while we were cancelled: never strand them
                self._flusher = asyncio.create_task(self._flush())


# A new store records its partition count and spread tags together (atomically, so that a
# second orchestrator starting at the same moment cannot take it for an old store).
# The deployment's settings, written by the first process on a new (or wiped) store: the
# partition count, the partition tags, and the deployment marker (`Store.check_marker`).
# Drop a client from a partition's set of client names if its index there is empty: in one
# script, so that a job created meanwhile (which adds both) keeps its index found.
FORGET_INDEX = """
if redis.call('ZCARD', KEYS[1]) == 0 then return redis.call('SREM', KEYS[2], ARGV[1]) end
return 0
"""

SETTLE_META = """
if redis.call('HEXISTS', KEYS[1], 'partitions') == 0 then
  redis.call('HSET', KEYS[1], 'partitions', ARGV[1], 'tags', 'spread')
end
redis.call('HSETNX', KEYS[1], 'deployment', ARGV[2])
return redis.call('HMGET', KEYS[1], 'partitions', 'tags', 'deployment')
"""


@dataclass(frozen=True, slots=True)
class DeploymentCounts:
    """What every orchestrator shares, counted in one round trip (for the metrics)."""

    # task type -> (tasks queued, queue score of the first in line or None, workers seen)
    per_type: dict[str, tuple[int, float | None, int]]
    webhook_backlog: int
    waiting_for_human: int


class Store:
    def __init__(self, client: aioredis.Redis, keys: Keys, url: str) -> None:
        self.redis = client
        self.keys = keys
        self.url = url
        # On Redis Cluster (redis+cluster://) `client` is redis-py's asyncio RedisCluster,
        # which offers the same commands; notifications then go over shard channels.
        self.cluster = cluster.is_cluster_url(url)
        self.wait = (0, 0)  # (replicas, timeout ms) to WAIT for after commits and leases
        self._commit = client.register_script(_script("commit.lua"))
        self._lease = client.register_script(_script("lease.lua"))
        self._claim = client.register_script(_script("claim_timers.lua"))
        self._prune = client.register_script(_script("prune_index.lua"))
        self._slots = client.register_script(_script("slots.lua"))
        self._tokens = client.register_script(_script("tokens.lua"))
        self._commits = Batcher(self._commit_batch, MAX_BATCH)
        self._heartbeats = Batcher(self._heartbeat_batch, MAX_BATCH)
        self._webhook_outcomes = Batcher(self._webhook_outcome_batch, MAX_BATCH)
        # The deployment marker this process found (or wrote) at start; see `check_marker`.
        self.marker: str | None = None
        self.wiped_at: int | None = None  # ms when the marker was found gone or replaced
        self._meta_restored = True  # False from a wipe until the settings are written again
        # Jobs this store changed, announced to long polls (the web console's live pages).
        self.changes = Changes()
        self.timing: StoreTiming | None = None

    @classmethod
    async def connect(
        cls,
        url: str,
        *,
        prefix: str = "il",
        partitions: int | None = None,
        wait_replicas: int = 0,
        wait_timeout_ms: int = 1000,
    ) -> Store:
        """A store on `url`. `partitions` must match the count the store was set up with
        (a mismatch is refused); None takes that count, or for a new store
        DEFAULT_PARTITIONS (CLUSTER_PARTITIONS on a cluster). With `wait_replicas`, every
        commit and lease is followed by WAIT on the same connection (see `_run_scripts`)."""
        if url.startswith("memory://"):
            import fakeredis  # the embedded store: same scripts, in-process

            client: aioredis.Redis = fakeredis.FakeAsyncRedis(decode_responses=True)
        elif cluster.is_cluster_url(url):
            # Same command methods as aioredis.Redis; one connection pool per node.
            client = cluster.cluster_client(url)  # type: ignore[assignment]
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
        default = CLUSTER_PARTITIONS if cluster.is_cluster_url(url) else DEFAULT_PARTITIONS
        store = cls(client, Keys(prefix, partitions or default), url)
        store.wait = (wait_replicas, wait_timeout_ms)
        try:
            await store._check_partitions(partitions)
        except BaseException:
            await store._close_client()
            raise
        return store

    async def close(self) -> None:
        await self._commits.close()
        await self._heartbeats.close()
        await self._webhook_outcomes.close()
        await self._close_client()

    async def _close_client(self) -> None:
        if self.cluster:
            await self.redis.aclose()
        else:
            await self.redis.aclose(close_connection_pool=True)

    async def _check_partitions(self, wanted: int | None) -> None:
        """Check the store (a cluster, or not one) and settle the partition layout: the
        first orchestrator on a new store records its count with spread tags; later ones
        take the recorded layout (a store set up before the tags spread has none)."""
        shown = redact(self.url)
        try:
            if self.cluster:
                await cluster.check_cluster(self.redis, shown)  # type: ignore[arg-type]
            elif not self.url.startswith("memory://"):
                await cluster.refuse_cluster_node(self.redis, shown)
            # Load the scripts up front (on every master, on a cluster), so that the first
            # pipelined EVALSHA of each does not come back NOSCRIPT and go again.
            scripts = (self._commit, self._lease, self._claim, self._prune, self._slots)
            for script in (*scripts, self._tokens):
                await self.redis.script_load(script.script)
            stored, tags, marker = await self._settle_meta()
            self.marker = str(marker)
        except DRIVER_ERRORS as exc:
            raise StoreUnavailable(f"cannot reach Redis at {shown}: {exc}") from exc
        if wanted is not None and str(stored) != str(wanted):
            raise PartitionMismatch(
                f"this Redis holds jobs in {stored} partitions but REDIS_PARTITIONS is "
                f"{wanted}; use {stored} (or leave REDIS_PARTITIONS unset)"
            )
        self.keys = Keys(self.keys.prefix, int(stored), spread=tags == "spread")

    @translated
    async def check_marker(self) -> bool:
        """False once the deployment marker this process saw at start is gone or replaced:
        the store was wiped (a Redis without persistence restarted, a FLUSHALL) and every
        job it held is lost. The marker is written again so that the store stays usable
        (and every other process notices too, its marker being different)."""
        if self.wiped_at is None:
            current = await self.redis.hget(self.keys.meta, "deployment")
            if current is not None and str(current) == self.marker:
                return True
            self.wiped_at = now_ms()
            self._meta_restored = False
        if not self._meta_restored:  # (tried again on the next check if Redis went meanwhile)
            await self._settle_meta()
            self._meta_restored = True
        return False

    async def _settle_meta(self) -> list[Any]:
        """[partitions, tags, deployment marker] as stored, writing them first if absent."""
        answer: list[Any] = await self.redis.eval(
            SETTLE_META, 1, self.keys.meta, str(self.keys.partitions), uuid.uuid4().hex
        )
        return answer

    async def shared_setting(self, name: str, proposal: str) -> str:
        """The deployment-wide value of a generated setting: `proposal` if this is the first
        orchestrator on this store to ask, else the value the first one stored."""
        field = f"generated:{name}"
        await self.redis.hsetnx(self.keys.meta, field, proposal)
        return str(await self.redis.hget(self.keys.meta, field))

    async def ping(self) -> bool:
        try:
            return bool(await self.redis.ping())
        except (*DRIVER_ERRORS, OSError, RuntimeError):
            return False

    # -- jobs --------------------------------------------------------------------------------

    @translated
    async def read_job(self, job_id: str) -> JobRecord | None:
        key = self.keys.job(job_id)
        while True:
            fields = ["v", "doc", LEGACY_LEASES, "input"]
            v, doc, leases, given = await self.redis.hmget(key, fields)
            if v is None or doc is None:
                return None
            apart = None if given is None else str(given)
            decoded = with_input(loads(doc), apart)
            ids = unpack(decoded)
            if ids is None:  # written before its tasks were stored apart
                record = JobRecord(int(v), decoded, loads(leases) if leases else {})
                ids = []
            else:
                record = JobRecord(int(v), decoded, {}, tasks_apart=True)
                decoded["tasks"] = {}
            record.input_apart = apart is not None
            # The fields the document names, read at the same version: its step outputs and
            # its active tasks' records and leases.
            numbers = outputs.wanted(decoded)
            names = [outputs.field_name(n) for n in numbers]
            names += [task_field(t) for t in ids] + [lease_field(t) for t in ids]
            if names:
                found = await self.redis.hmget(key, ["v", *names])
                if found[0] != v:
                    continue  # changed between the two reads: read it again
                outs = [str(o) for o in found[1 : 1 + len(numbers)] if o is not None]
                if len(outs) < len(numbers):
                    continue  # (cannot be at the same version; read again rather than fail)
                for n, text in zip(numbers, outs, strict=True):
                    record.kept.values[n] = loads(text)
                    record.kept.sizes[n] = len(text)
                at = 1 + len(numbers)
                records, lease_texts = found[at : at + len(ids)], found[at + len(ids) :]
                decoded["tasks"] = {t: loads(r) for t, r in zip(ids, records, strict=True) if r}
                leased = zip(ids, lease_texts, strict=True)
                record.leases = {t: str(r) for t, r in leased if r is not None}
            if record.tasks_apart:
                record.tasks_read = dict(decoded["tasks"])
            outputs.assemble(decoded, record.kept)
            return record

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
        # (partition, large change's position or -1) -> positions in items
        by_partition: dict[tuple[int, int], list[int]] = {}
        for position, (change, _) in enumerate(items):
            alone = position if _size(change) > LARGE_CHANGE else -1
            group = (self.keys.partition(change.job_id), alone)
            by_partition.setdefault(group, []).append(position)
        calls = [
            self._batch_call(partition, [items[i] for i in positions])
            for (partition, _), positions in by_partition.items()
        ]
        answers = await self._run_scripts(self._commit, calls)
        outcomes: list[bool | Exception] = [False] * len(items)
        for positions, answer in zip(by_partition.values(), answers, strict=True):
            for offset, position in enumerate(positions):
                outcomes[position] = (
                    answer if isinstance(answer, Exception) else bool(answer[offset])
                )
        self.changes.notify(items[i][0].job_id for i, ok in enumerate(outcomes) if ok is True)
        return outcomes

    async def _run_scripts(
        self, script: AsyncScript, calls: Sequence[tuple[list[str], list[str]]]
    ) -> list[Any]:
        """Run `script` once per (KEYS, ARGV), all in one round trip; each call's answer, or
        the Redis error it met. A Redis that lost its scripts (a restart) gets them again."""
        replicas, timeout_ms = self.wait if script not in (self._claim, self._tokens) else (0, 0)
        if len(calls) == 1 and not replicas:
            try:
                return [await script(keys=calls[0][0], args=calls[0][1])]
            except DRIVER_ERRORS as exc:
                return [exc]
        # On Redis Cluster this is one pipeline per master, sent concurrently: redis-py
        # groups the calls by the node of their slot (every call's keys share one slot).
        # Its ClusterPipeline blocks the evalsha() method, so the command goes by name.
        pipe = self.redis.pipeline(transaction=False)
        for keys, args in calls:
            pipe.execute_command("EVALSHA", script.sha, len(keys), *keys, *args)
        waits = self._add_waits(pipe, calls, replicas, timeout_ms) if replicas else 0
        answers: list[Any] = await pipe.execute(raise_on_error=False)
        if waits:
            acked, answers = answers[-waits:], answers[:-waits]
            if any(isinstance(n, Exception) or int(n) < replicas for n in acked):
                late = redis.exceptions.ConnectionError(
                    f"fewer than {replicas} replica(s) acknowledged within {timeout_ms} ms "
                    f"(WAIT answered {acked})"
                )
                answers = [late if not isinstance(a, Exception) else a for a in answers]
        # A rerun after NOSCRIPT (a master that lost its scripts) goes without WAIT.
        for i, (keys, args) in enumerate(calls):
            if isinstance(answers[i], redis.exceptions.NoScriptError):
                try:
                    answers[i] = await script(keys=keys, args=args)  # loads it, runs it
                except DRIVER_ERRORS as exc:
                    answers[i] = exc
        return answers

    def _add_waits(
        self, pipe: Any, calls: Sequence[tuple[list[str], list[str]]], replicas: int, ms: int
    ) -> int:
        """Append WAIT after the scripts, on the same connection as the writes it covers (one
        per master on a cluster: the pipeline sends each node's commands in order on one
        connection). Returns how many WAITs were added."""
        if not self.cluster:
            pipe.execute_command("WAIT", replicas, ms)
            return 1
        client: RedisCluster = self.redis  # type: ignore[assignment]  # a cluster here
        nodes = {}
        for keys, _ in calls:
            node = client.get_node_from_key(keys[0])
            if node is not None:  # (None: no master for the slot; the script fails anyway)
                nodes[node.name] = node
        for node in nodes.values():
            pipe.execute_command("WAIT", replicas, ms, target_nodes=node)
        return len(nodes)

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
        values: list[str] = []  # ARGV[2..]: the field values, apart from the plan's JSON
        for change, history_start in changes:
            job_id = change.job_id
            expected = change.expected_version
            fields = dict(change.fields)
            for offset, event in enumerate(change.history):
                fields[f"h:{history_start + offset:08d}"] = dumps(event)
            for task_id, payload in change.payloads.items():
                fields[f"p:{task_id}"] = payload
            for n, item in change.branch_items.items():
                fields[f"i:{n}"] = item
            for n, result in change.branch_results.items():
                fields[f"r:{n}"] = result
            for task_id in change.blank:  # (see Orchestrator.commit: `_blank_ended`)
                fields.update(dict.fromkeys(fields_of(task_id), ""))
            if change.ttl_ms:
                # The job ends: its tasks' payloads copy what it keeps (its input, an
                # output) for the whole retention period. Emptied in the HSET the commit
                # makes anyway, rather than deleted by one more command.
                fields.update((f"p:{t}", "") for t in change.drop if f"p:{t}" not in fields)
            flat: list[str | int] = []
            for name, value in fields.items():
                values.append(value)
                flat += (name, len(values) + 1)  # its ARGV index (Lua counts from 1)
            # An ended task's payload goes (emptied above at the job's end, when the hash
            # expires whole). Its branch fields do, being as many as its items, for the
            # whole retention period.
            hdel = [] if change.ttl_ms else [f"p:{t}" for t in change.drop]
            hdel += change.drop_fields
            for n in range(change.drop_branches):
                hdel += [f"i:{n}", f"r:{n}"]
            hdel += map(outputs.field_name, change.drop_outputs)
            if (change.drop_branches or change.drop_fields) and fields:  # (it deletes last)
                hdel = [name for name in hdel if name not in fields]
            lower = change.timer_lower and change.timer_ms is not None
            if change.timer_ms == KEEP or (change.timer_ms is None and expected is None):
                timer: str | bool = "keep"  # (a job being created has no timer to remove)
            elif change.timer_ms is None:
                timer = "keep" if change.timer_lower else False
            else:
                timer = str(change.timer_ms)
            plan: dict[str, Any] = {"lower": True} if lower else {}
            plans.append(
                plan
                | {
                    "key": key(keys.job(job_id)),
                    "id": job_id,
                    "expect": "" if expected is None else str(expected),
                    "fields": flat,
                    "hdel": hdel,
                    "enqueue": [
                        [key(keys.queue(partition, t)), repr(score), m]
                        for t, m, score in change.enqueue
                    ],
                    "dequeue": [[key(keys.queue(partition, t)), m] for t, m in change.dequeue],
                    "timers": timers,
                    "timer": timer,
                    "index": (
                        [
                            key(keys.client_jobs(partition, change.index[0])),
                            str(change.index[1]),
                            key(keys.client_names(partition)),
                            change.index[0],
                        ]
                        if change.index
                        else False
                    ),
                    **self._label_plan(partition, change, key),
                    "webhooks": webhooks,
                    "webhook": str(change.webhook_ms) if change.webhook_ms is not None else False,
                    "webhook_member": outbox_member(job_id, change.webhook_end),
                    "humans": humans,
                    "human": str(change.human_ms) if change.human_ms is not None else False,
                    "ttl": str(change.ttl_ms) if change.ttl_ms else False,
                    "persist": change.persist,
                    "ready": sorted({f"{t}|{partition}" for t, _, _ in change.enqueue}),
                    # announced as `<id>:<version>` (see Orchestrator.job_done)
                    "done": change.fields["v"] if change.done else False,
                }
            )
        if self.cluster:  # SPUBLISH: the event goes to this partition's master only
            argument = {
                "plans": plans,
                "ready_channel": keys.ready_shard(partition),
                "done_channel": keys.done_shard(partition),
                "publish": "SPUBLISH",
            }
        else:
            argument = {
                "plans": plans,
                "ready_channel": keys.ready_channel,
                "done_channel": keys.done_channel,
                "publish": "PUBLISH",
            }
        return key_list, [dumps(argument), *values]

    def _label_plan(
        self, partition: int, change: Commit, key: Callable[[str], int]
    ) -> dict[str, Any]:
        """The `labels` and `label_hash` of a plan: a labelled job, as it is created, goes
        into one index per label and into its client's job -> labels hash."""
        if not change.index or not change.labels:
            return {"labels": [], "label_hash": False}
        client = change.index[0]
        labels = sorted(change.labels.items())
        return {
            "labels": [key(self.keys.label_jobs(partition, client, k, v)) for k, v in labels],
            "label_hash": [key(self.keys.job_labels(partition, client)), dumps(dict(labels))],
        }

    @translated
    async def read_branches(
        self, job_id: str, items: Sequence[int], results: int
    ) -> tuple[dict[int, Any], dict[int, Any]]:
        """A parallel state's stored items of branches `items`, and the results stored for
        branches 0 .. results-1 (a branch without one is left out), in one command."""
        names = [f"i:{n}" for n in items] + [f"r:{n}" for n in range(results)]
        if not names:
            return {}, {}
        values = await self.redis.hmget(self.keys.job(job_id), names)
        found = [loads(value) if value is not None else _ABSENT for value in values]
        read = dict(zip(items, found, strict=False))
        stored = dict(enumerate(found[len(items) :]))
        return (
            {n: v for n, v in read.items() if v is not _ABSENT},
            {n: v for n, v in stored.items() if v is not _ABSENT},
        )

    @translated
    async def exists(self, job_id: str) -> bool:
        return bool(await self.redis.exists(self.keys.job(job_id)))

    @translated
    async def version(self, job_id: str) -> int | None:
        """The job's version as stored (None: no such job): one short read."""
        v = await self.redis.hget(self.keys.job(job_id), "v")
        return None if v is None else int(v)

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
        indexes = [self.keys.client_jobs(p, client) for p in range(self.keys.partitions)]
        return await self._newest(indexes, limit, after)

    @translated
    async def job_ids_for_label(
        self, client: str, label: str, value: str, *, limit: int, after: tuple[int, str] | None
    ) -> list[tuple[str, int]]:
        """`job_ids_for_client`, for the client's jobs labelled `label`=`value` only."""
        partitions = range(self.keys.partitions)
        indexes = [self.keys.label_jobs(p, client, label, value) for p in partitions]
        return await self._newest(indexes, limit, after)

    async def _newest(
        self, indexes: list[str], limit: int, after: tuple[int, str] | None
    ) -> list[tuple[str, int]]:
        """The newest `limit` (id, ms) entries of per-partition indexes, below `after`."""
        top = "+inf" if after is None else str(after[0])
        pipe = self.redis.pipeline(transaction=False)
        for index in indexes:
            pipe.zrevrangebyscore(index, top, "-inf", start=0, num=limit + 64, withscores=True)
        rows = await pipe.execute()
        found = [(str(job_id), int(score)) for row in rows for job_id, score in row]
        if after is not None:  # keep what sorts strictly after the cursor
            found = [(j, ms) for j, ms in found if (ms, j) < (after[0], after[1])]
        found.sort(key=lambda pair: (pair[1], pair[0]), reverse=True)
        return found[:limit]

    @translated
    async def prune_client_jobs(
        self, partition: int, client: str, start: int, count: int
    ) -> tuple[int, int]:
        """Drop from the client's job index (one partition) the ids whose job is gone
        (its retention ended), and their label index entries, looking at `count` entries
        from rank `start`, oldest first. Returns (ids dropped, the rank to look from next:
        0 at the end). An entry is written in the commit that creates its job, so a missing
        job is an expired one; prune_index.lua checks again that it is still missing."""
        keys = self.keys
        index = keys.client_jobs(partition, client)
        ids = [str(job_id) for job_id in await self.redis.zrange(index, start, start + count - 1)]
        if not ids:
            if start == 0:  # empty: forget the client here (unless a job came meanwhile)
                await self._forget_index(partition, client)
            return 0, 0
        pipe = self.redis.pipeline(transaction=False)
        for job_id in ids:
            pipe.exists(keys.job(job_id))
        alive = await pipe.execute()
        gone = [job_id for job_id, found in zip(ids, alive, strict=True) if not found]
        if gone:
            hash_key = keys.job_labels(partition, client)
            stored = await self.redis.hmget(hash_key, gone)
            key_list = [index, hash_key]
            plans = []
            for job_id, raw in zip(gone, stored, strict=True):
                labels: dict[str, str] = loads(raw) if raw else {}
                first = len(key_list) + 1  # Lua indexes KEYS from 1
                key_list.append(keys.job(job_id))
                key_list.extend(keys.label_jobs(partition, client, k, v) for k, v in labels.items())
                plans.append([job_id, first, len(labels), raw or False])
            dropped = int(await self._prune(keys=key_list, args=[dumps(plans)]))
        else:
            dropped = 0
        following = start + len(ids) - dropped
        if following == 0:  # all looked at were expired: the index may be empty now
            await self._forget_index(partition, client)
        return dropped, following

    async def _forget_index(self, partition: int, client: str) -> None:
        index, names = self.keys.client_jobs(partition, client), self.keys.client_names(partition)
        await self.redis.eval(FORGET_INDEX, 2, index, names, client)

    @translated
    async def indexed_clients(self, partition: int) -> list[str]:
        """The clients with a job index in `partition` (see Keys.client_names)."""
        return sorted(
            str(name) for name in await self.redis.smembers(self.keys.client_names(partition))
        )

    @translated
    async def register_old_client_indexes(self) -> int:
        """Once per store: add to the sets of client names the indexes written before those
        sets existed (found with SCAN, on every master of a cluster). Returns how many."""
        if await self.redis.hget(self.keys.meta, "client_names"):
            return 0
        found = 0
        async for key in self.redis.scan_iter(match=f"{self.keys.prefix}:*:client:*", count=1000):
            where = self.keys.partition_of_client_index(str(key))
            if where is not None:
                found += await self.redis.sadd(self.keys.client_names(where[0]), where[1])
        await self.redis.hset(self.keys.meta, "client_names", "1")
        return found

    @translated
    async def read_docs(self, job_ids: Sequence[str]) -> list[dict[str, Any] | None]:
        """The documents of several jobs in one round trip (None for a job that is gone),
        for a listing: without their active tasks' records, which a listing does not show
        (stored apart, they would take a second round trip)."""
        pipe = self.redis.pipeline(transaction=False)
        for job_id in job_ids:
            pipe.hmget(self.keys.job(job_id), ["doc", "input"])
        docs = [
            with_input(loads(raw), given) if raw else None for raw, given in await pipe.execute()
        ]
        for doc in docs:
            if doc is not None and unpack(doc) is not None:
                doc["tasks"] = {}
        return docs

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
        self.changes.notify(leased.job_id for leases in made for leased in leases)
        return made

    async def claim_timers(self, now_ms: int, limit: int, claim_ms: int) -> list[str]:
        """Job ids whose timer is due, in every partition (at most `limit` per partition),
        claimed for `claim_ms` so one orchestrator handles each."""
        keys = [self.keys.timers(p) for p in range(self.keys.partitions)]
        return await self._claim_due(keys, now_ms, limit, claim_ms)

    async def claim_webhooks(self, now_ms: int, limit: int, claim_ms: int) -> list[str]:
        """Outbox entries (keys.outbox_member) whose webhook delivery is due, claimed
        likewise."""
        keys = [self.keys.webhooks(p) for p in range(self.keys.partitions)]
        return await self._claim_due(keys, now_ms, limit, claim_ms)

    @translated
    async def _claim_due(
        self, keys: list[str], now_ms: int, limit: int, claim_ms: int
    ) -> list[str]:
        # One script call for all partitions on a single Redis; on a cluster one per
        # partition (each is its own slot), sent as one pipeline per master.
        groups = [[key] for key in keys] if self.cluster else [keys]
        args = [str(now_ms), str(limit), str(claim_ms)]
        answers = await self._run_scripts(self._claim, [(group, args) for group in groups])
        due: list[str] = []
        for answer in answers:
            if isinstance(answer, Exception):
                raise answer
            due += answer
        return due

    @translated
    async def read_webhooks(self, members: Sequence[str]) -> list[WebhookDue]:
        """The documents and attempt counts of claimed deliveries (outbox entries, or job
        ids for their first ends), in one round trip (one pipeline per master on a
        cluster)."""
        ends = [parse_member(member) for member in members]
        pipe = self.redis.pipeline(transaction=False)
        for job_id, end in ends:
            pipe.hmget(self.keys.job(job_id), ["doc", "input", attempts_field(end)])
        rows = await pipe.execute()
        return [
            WebhookDue(
                job_id,
                with_input(loads(raw), None if given is None else str(given)) if raw else None,
                int(attempts or 0),
                end,
            )
            for (job_id, end), (raw, given, attempts) in zip(ends, rows, strict=True)
        ]

    @translated
    async def record_webhooks(
        self, attempted: Sequence[str], done: Sequence[str], retry: Mapping[str, int]
    ) -> None:
        """The outcomes of a turn of deliveries (outbox entries, see keys.outbox_member), in
        one round trip: one more attempt counted for each end in `attempted` (whose job the
        turn has just read), the entries in `done` out of the outbox, those in `retry` due
        again at the given ms. The outbox changes are one ZREM and one ZADD per partition.
        Attempts go first: a Redis lost half way leaves the entries claimed, due again when
        the claim runs out."""
        pipe = self.redis.pipeline(transaction=False)
        for job_id, end in map(parse_member, attempted):
            pipe.hincrby(self.keys.job(job_id), attempts_field(end), 1)
        removals: dict[int, list[str]] = {}
        for member in done:
            removals.setdefault(self.keys.partition(parse_member(member)[0]), []).append(member)
        additions: dict[int, dict[str, int]] = {}
        for member, at_ms in retry.items():
            additions.setdefault(self.keys.partition(parse_member(member)[0]), {})[member] = at_ms
        for partition, members in removals.items():
            pipe.zrem(self.keys.webhooks(partition), *members)
        for partition, scores in additions.items():
            pipe.zadd(self.keys.webhooks(partition), scores)
        if attempted or removals or additions:
            await pipe.execute()

    async def webhook_outcome(self, member: str, retry_at_ms: int | None) -> None:
        """Record the outcome of one delivery (its outbox entry) whose attempt is counted
        already: out of the outbox (None), or due again at `retry_at_ms`. Outcomes that
        arrive while one batch is on its way go together in the next (see Batcher): one
        round trip each."""
        await self._webhook_outcomes.submit((member, retry_at_ms))

    async def _webhook_outcome_batch(
        self, items: list[tuple[str, int | None]]
    ) -> list[Exception | None]:
        done = [member for member, at_ms in items if at_ms is None]
        retry = {member: at_ms for member, at_ms in items if at_ms is not None}
        try:
            await self.record_webhooks((), done, retry)
        except StoreUnavailable as exc:
            return [exc] * len(items)
        return [None] * len(items)

    # -- concurrency keys and rate limits ------------------------------------------------------

    @translated
    async def slot(self, op: str, tag: str, member: str, limit: int, *, previous: str = "") -> Slot:
        """Acquire or release (`op`) a concurrency key's slot for `member` (`<job id>|<round>`)
        and admit the jobs next in line: one script on the key's own slot (lua/slots.lua).
        `previous`: an earlier round of the same job, forgotten first."""
        keys = [self.keys.slots(tag), self.keys.slot_queue(tag), self.keys.slot_counters(tag)]
        args = [op, member, previous, str(limit), str(SLOT_KEYS_TTL_MS)]
        answer = await self._run_scripts(self._slots, [(keys, args)])
        if isinstance(answer[0], Exception):
            raise answer[0]
        where, number, *rest = answer[0]
        admitted = [(str(rest[i]), int(rest[i + 1])) for i in range(0, len(rest), 2)]
        return Slot(str(where), int(number), admitted)

    @translated
    async def slot_counts(self, tag: str, member: str) -> tuple[int, int | None, int]:
        """(jobs holding a slot, the member's 0-based place in line or None, jobs in line)
        of a concurrency key, for `explain`."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.zcard(self.keys.slots(tag))
        pipe.zrank(self.keys.slot_queue(tag), member)
        pipe.zcard(self.keys.slot_queue(tag))
        running, place, waiting = await pipe.execute()
        return int(running), None if place is None else int(place), int(waiting)

    @translated
    async def take_tokens(
        self, asks: Sequence[tuple[str, int, float, int]]
    ) -> list[tuple[int, int]]:
        """For each (task type, tokens wanted, rate per second, burst): (tokens granted, ms
        until the next one), from each type's bucket (lua/tokens.lua), in one round trip. A
        negative count gives unused tokens back."""
        calls = [
            ([self.keys.rate_bucket(task_type)], [str(wanted), repr(rate), str(burst)])
            for task_type, wanted, rate, burst in asks
        ]
        answers = await self._run_scripts(self._tokens, calls)
        out: list[tuple[int, int]] = []
        for answer in answers:
            if isinstance(answer, Exception):
                raise answer
            out.append((int(answer[0]), int(answer[1])))
        return out

    # -- workers -------------------------------------------------------------------------------

    @translated
    async def register_worker(
        self, worker_id: str, registration: Mapping[str, Any], ttl_ms: int
    ) -> None:
        pipe = self.redis.pipeline(transaction=False)
        now = now_ms()
        pipe.set(self.keys.worker(worker_id), dumps(registration), px=ttl_ms)
        pipe.set(self.keys.worker_alive(worker_id), dumps({"at": now, "tasks": []}), px=ttl_ms)
        pipe.zadd(self.keys.workers, {worker_id: now})
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
        tasks: Sequence[str] | None,
        alive_ms: int,
        registration_ms: int,
        skills: Sequence[str] = (),
    ) -> tuple[bool, list[str]]:
        """Record a heartbeat. Returns (worker known, task ids it should cancel). Heartbeats
        are batched like commits: 1,000 workers' heartbeats take one connection, not 100.
        `tasks`: those the worker holds, None when it did not say. `skills` (the worker's
        task types) are marked seen now (see `keys.skill_workers`)."""
        held = None if tasks is None else list(tasks)
        item = (worker_id, held, alive_ms, registration_ms, tuple(skills))
        return await self._heartbeats.submit(item)

    async def _heartbeat_batch(
        self, beats: list[tuple[str, list[str] | None, int, int, tuple[str, ...]]]
    ) -> list[tuple[bool, list[str]] | Exception]:
        started = time.perf_counter()
        pipe = self.redis.pipeline(transaction=False)
        now = now_ms()
        for worker_id, tasks, alive_ms, registration_ms, _ in beats:
            pipe.pexpire(self.keys.worker(worker_id), registration_ms)
            beat: dict[str, Any] = {"at": now} if tasks is None else {"at": now, "tasks": tasks}
            pipe.set(self.keys.worker_alive(worker_id), dumps(beat), px=alive_ms)
            pipe.spop(self.keys.worker_cancels(worker_id), 1000)
            # xx: a heartbeat refreshes the index entry of a registered worker only.
            pipe.zadd(self.keys.workers, {worker_id: now}, xx=True)
        # After the per-worker commands, so that answers[4 * i ...] stay each worker's own.
        for worker_id, _, _, _, skills in beats:
            for skill in skills:
                pipe.zadd(self.keys.skill_workers(skill), {worker_id: now})
        answers = await pipe.execute(raise_on_error=False)
        if self.timing is not None:
            self.timing("heartbeat", len(beats), time.perf_counter() - started)
        outcomes: list[tuple[bool, list[str]] | Exception] = []
        for i in range(0, 4 * len(beats), 4):
            known, stored, cancels, indexed = answers[i : i + 4]
            replies = (known, stored, cancels, indexed)
            failed = next((a for a in replies if isinstance(a, Exception)), None)
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
    async def workers(
        self, now_ms: int, ttl_ms: int, limit: int
    ) -> list[tuple[str, dict[str, Any], dict[str, Any] | None]]:
        """Registered workers, most recently seen first, at most `limit`: (id, registration,
        last heartbeat or None once it expired). Index entries older than `ttl_ms` are
        pruned first; an entry whose registration has expired meanwhile is left out."""
        await self.redis.zremrangebyscore(self.keys.workers, "-inf", now_ms - ttl_ms)
        ids = [str(i) for i in await self.redis.zrevrange(self.keys.workers, 0, limit - 1)]
        pipe = self.redis.pipeline(transaction=False)
        for worker_id in ids:
            pipe.get(self.keys.worker(worker_id))
            pipe.get(self.keys.worker_alive(worker_id))
        answers = await pipe.execute()
        found = []
        for i, worker_id in enumerate(ids):
            registration, alive = answers[2 * i : 2 * i + 2]
            if registration:
                found.append((worker_id, loads(registration), loads(alive) if alive else None))
        return found

    @translated
    @translated
    async def deployment_counts(
        self, types: Sequence[str], connected_ms: int, now: int
    ) -> DeploymentCounts:
        """Queues, connected workers, webhook backlog and approvals waiting, over every
        partition: 2*P*T + T + 2*P commands in one pipelined round trip."""
        keys = self.keys
        partitions = range(keys.partitions)
        pipe = self.redis.pipeline(transaction=False)
        for task_type in types:
            for p in partitions:
                pipe.zcard(keys.queue(p, task_type))
                pipe.zrange(keys.queue(p, task_type), 0, 0, withscores=True)
            pipe.zcount(keys.skill_workers(task_type), now - connected_ms, "+inf")
        for p in partitions:
            pipe.zcard(keys.webhooks(p))
            pipe.zcard(keys.humans(p))
        answers = iter(await pipe.execute())
        per_type: dict[str, tuple[int, float | None, int]] = {}
        for task_type in types:
            count, first = 0, None
            for _ in partitions:
                count += int(next(answers))
                head = next(answers)
                if head:
                    score = float(head[0][1])
                    first = score if first is None else min(first, score)
            per_type[task_type] = (count, first, int(next(answers)))
        backlog = humans = 0
        for _ in partitions:
            backlog += int(next(answers))
            humans += int(next(answers))
        return DeploymentCounts(per_type, backlog, humans)

    @translated
    async def workers_seen(
        self, task_type: str, connected_ms: int, now: int
    ) -> tuple[int, int | None]:
        """(workers of `task_type` seen within `connected_ms`, ms since any was last seen or
        None)."""
        key = self.keys.skill_workers(task_type)
        pipe = self.redis.pipeline(transaction=False)
        pipe.zcount(key, now - connected_ms, "+inf")
        pipe.zrevrange(key, 0, 0, withscores=True)
        count, last = await pipe.execute()
        return int(count), (now - int(last[0][1]) if last else None)

    async def queue_depths(self, task_types: Sequence[str]) -> dict[str, int]:
        """Tasks waiting for a worker, per task type (summed over the partitions)."""
        pipe = self.redis.pipeline(transaction=False)
        for task_type in task_types:
            for partition in range(self.keys.partitions):
                pipe.zcard(self.keys.queue(partition, task_type))
        counts = await pipe.execute()
        n = self.keys.partitions
        return {t: sum(counts[i * n : (i + 1) * n]) for i, t in enumerate(task_types)}

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
        """(kind, message) for queued tasks (kind "ready") and finished jobs ("done"), from
        every orchestrator; None after each second without one, so the consumer can check
        whether to stop."""
        if self.cluster:
            async for item in self._shard_notifications():
                yield item
            return
        pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
        await pubsub.subscribe(self.keys.ready_channel, self.keys.done_channel)
        try:
            while True:
                message = await pubsub.get_message(timeout=1.0)
                if message is not None and message.get("type") == "message":
                    channel = str(message["channel"])
                    kind = "ready" if channel == self.keys.ready_channel else "done"
                    yield kind, str(message["data"])
                else:
                    yield None
        finally:
            await pubsub.aclose()  # type: ignore[no-untyped-call]  # untyped in redis-py

    async def _shard_notifications(self) -> AsyncIterator[tuple[str, str] | None]:
        subscription = cluster.ShardedSubscription(
            self.redis,  # type: ignore[arg-type]
            self.url,
            self.keys.shard_channels(),
        )
        try:
            await subscription.open()
            async for item in subscription.messages(idle_s=1.0):
                if item is None:
                    yield None
                    continue
                channel, data = item
                yield ("ready" if channel.endswith(":ready") else "done"), data
        finally:
            await subscription.close()


_ABSENT = object()  # a hash field that does not exist


def _size(change: Commit) -> int:
    """About how many values `change` writes (fields, history, payloads, queue entries)."""
    return (
        len(change.fields)
        + len(change.branch_items)
        + len(change.branch_results)
        + 2 * change.drop_branches
        + len(change.drop_outputs)
        + len(change.history)
        + len(change.payloads)
        + len(change.drop)
        + len(change.drop_fields)
        + len(change.enqueue)
        + len(change.dequeue)
    )
