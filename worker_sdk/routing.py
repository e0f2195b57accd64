"""Which orchestrator to ask for the next task, and how many tasks may run at once.

FAILOVER: one poll loop asks the first orchestrator, in priority order, that is up. When a
call finds it unreachable it is marked down and the next poll goes to the next one; the
supervisor keeps probing the ones that are down, and as soon as a higher-priority one
answers again the following poll goes back to it.

WATERFALL (avtomatika's meaning): one poll loop too, but a poll that comes back empty sends
the next one down the priority order (to the next orchestrator that is up); a poll that
brings tasks sends the next one back to the first. So an orchestrator with work is asked
even while those before it are up but idle.

ROUND_ROBIN: one poll loop per orchestrator, each holding at most one open poll. A poll
needs a free slot (MAX_CONCURRENT_TASKS is never exceeded: a poll that brings a task hands
its slot to the task). Slots go to the waiting loops in smooth weighted round robin, so
orchestrators with work share the worker by their `weight`. While slots are short, a poll
waits at most `round_robin_turn` seconds, and not at all on an orchestrator whose last poll
came back empty; so an idle orchestrator never holds a slot that a busy one could use.
A loop whose orchestrator is down waits until the supervisor finds it up again.

Batches (an Interlock extension, docs/rxon-protocol.md §11): once a poll holds its slot it
also takes, without waiting, more of the slots that are free (never one a waiting loop is
queued for, and in ROUND_ROBIN never the ones the other orchestrators' loops may still need,
so the wait chosen above is the same as it would be with one slot), up to MAX_TASKS_PER_POLL
in all. It asks for as many tasks as it holds slots (`max_tasks`), hands each task that came
to its own slot, and gives back the slots it did not use.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from worker_sdk.config import WorkerConfig
from worker_sdk.connection import Backoff, Connection, RateLimited, Refused, Unavailable

log = logging.getLogger("worker_sdk.routing")

TaskSink = Callable[[Connection, dict[str, Any]], bool]
MAX_TASKS_PER_POLL = 32  # slots one poll may hold, so tasks it may ask for


@dataclass(eq=False)
class _Waiter:
    key: str
    weight: int
    future: asyncio.Future[None] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


class SlotGate:
    """At most `capacity` slots in use; free slots go to waiters by smooth weighted round
    robin (the nginx algorithm: with equal weights, strict alternation)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.used = 0
        self.used_by: dict[str, int] = {}  # key -> slots it holds (open polls and tasks)
        self._waiters: list[_Waiter] = []
        self._credit: dict[str, int] = {}
        self._released: list[asyncio.Future[None]] = []

    def next_release(self) -> asyncio.Future[None]:
        """A future resolved the next time any slot is given back."""
        future = asyncio.get_running_loop().create_future()
        self._released.append(future)
        return future

    def _count(self, key: str, slots: int) -> None:
        self.used += slots
        self.used_by[key] = self.used_by.get(key, 0) + slots

    @property
    def free(self) -> int:
        return self.capacity - self.used

    async def acquire(self, key: str = "", weight: int = 1) -> None:
        if self.used < self.capacity and not self._waiters:
            self._count(key, 1)
            return
        waiter = _Waiter(key, weight)
        self._waiters.append(waiter)
        try:
            await waiter.future
        except asyncio.CancelledError:
            if waiter.future.done() and not waiter.future.cancelled():
                self.release(1, key)  # granted just as we were cancelled: give it back
            elif waiter in self._waiters:
                self._waiters.remove(waiter)
            raise

    def try_acquire(self, most: int, key: str = "") -> int:
        """Take up to `most` free slots without waiting; how many were taken. None while a
        waiter is queued: a free slot is about to be its."""
        if self._waiters:
            return 0
        taken = max(0, min(most, self.capacity - self.used))
        self._count(key, taken)
        return taken

    def release(self, count: int = 1, key: str = "") -> None:
        if count <= 0:
            return
        self._count(key, -count)
        for future in self._released:
            if not future.done():
                future.set_result(None)
        self._released.clear()
        # A waiter cancelled since it queued has a cancelled future and leaves on its own.
        self._waiters = [w for w in self._waiters if not w.future.done()]
        while self.used < self.capacity and self._waiters:
            waiter = self._pick()
            self._waiters.remove(waiter)
            self._count(waiter.key, 1)
            waiter.future.set_result(None)

    def _pick(self) -> _Waiter:
        total = sum(w.weight for w in self._waiters)
        for w in self._waiters:
            self._credit[w.key] = self._credit.get(w.key, 0) + w.weight
        best = max(self._waiters, key=lambda w: self._credit[w.key])  # ties: the first
        self._credit[best.key] -= total
        return best


class Router:
    """Runs the poll loops for the configured mode until `stopping` is set."""

    def __init__(
        self,
        config: WorkerConfig,
        connections: Sequence[Connection],
        gate: SlotGate,
        skills: Callable[[], list[str]],
        sink: TaskSink,
        stopping: asyncio.Event,
    ) -> None:
        self.config = config
        self.connections = connections  # in priority order
        self.gate = gate
        self.skills = skills
        self.sink = sink
        self.stopping = stopping
        self._empty: dict[str, bool] = {}  # url -> its last poll brought nothing
        self._fall = 0  # WATERFALL: how far down the priority order the next poll goes
        self._changes: list[asyncio.Future[None]] = []
        for connection in connections:
            connection.listeners.append(self._changed)

    # -- selection ---------------------------------------------------------------------------

    def active(self) -> Connection | None:
        """FAILOVER: the first orchestrator in priority order that is up. WATERFALL: the
        one the last empty polls have fallen to (back to the first after any task)."""
        up = [c for c in self.connections if c.up]
        if not up:
            return None
        if self.config.mode == "WATERFALL":
            return up[self._fall % len(up)]
        return up[0]

    @property
    def single_loop(self) -> bool:
        return self.config.mode in ("FAILOVER", "WATERFALL")

    def poll_wait(self, connection: Connection) -> float:
        """How long the next poll to `connection` may wait (its slot is already held)."""
        full = self.config.poll_timeout
        if self.single_loop:
            return full
        others = sum(1 for c in self.connections if c.up and c is not connection)
        if self.gate.free >= others:
            return full  # every other loop can still get a slot: waiting costs nobody
        if self._empty.get(connection.url):
            return 0.0
        return min(full, self.config.round_robin_turn)

    def extra_slots(self, connection: Connection) -> int:
        """How many more free slots a poll to `connection`, holding one, may take."""
        spare = self.gate.free
        if not self.single_loop:
            others = [c for c in self.connections if c.up and c is not connection]
            # Leave a slot for every other loop, so that poll_wait decides as with one.
            spare -= len(others)
            # And take no more than this orchestrator's weighted share of the slots while
            # the others have work too: whoever polls when slots free up must not take
            # them all (that split two busy orchestrators 15/5 rather than 10/10).
            spare = min(spare, self.share(connection) - self.gate.used_by.get(connection.url, 0))
        return max(0, min(spare, MAX_TASKS_PER_POLL - 1))

    def share(self, connection: Connection) -> int:
        """ROUND_ROBIN: the slots `connection` may hold while the others have work too (its
        weighted share, rounded up); all of them when the others are down or idle."""
        busy = [
            c
            for c in self.connections
            if c.up and c is not connection and not self._empty.get(c.url)
        ]
        weight = connection.config.weight
        total = weight + sum(c.config.weight for c in busy)
        return -(-self.gate.capacity * weight // total)

    def over_share(self, connection: Connection) -> bool:
        """ROUND_ROBIN: `connection` holds its share already (so it polls again only when
        one of its slots comes back, or the others go idle)."""
        if self.single_loop:
            return False
        return self.gate.used_by.get(connection.url, 0) >= self.share(connection)

    def _changed(self) -> None:
        for future in self._changes:
            if not future.done():
                future.set_result(None)
        self._changes.clear()

    def next_change(self) -> asyncio.Future[None]:
        """A future resolved the next time any orchestrator goes up or down."""
        future = asyncio.get_running_loop().create_future()
        self._changes.append(future)
        return future

    # -- poll loops --------------------------------------------------------------------------

    async def run(self) -> None:
        if self.single_loop:
            await self._loop(None)
        else:
            await asyncio.gather(*(self._loop(c) for c in self.connections))

    async def _loop(self, fixed: Connection | None) -> None:
        backoff = Backoff(self.config.backoff_initial, self.config.backoff_max)
        polled: Connection | None = None  # FAILOVER: where the last poll went
        while not self.stopping.is_set():
            connection = fixed if fixed is not None else self.active()
            if connection is None or not connection.up:
                await self._unless_stopped(self.next_change())
                continue
            if self.over_share(connection):
                await self._unless_stopped(self.gate.next_release())
                continue
            if fixed is None and connection is not polled:
                log.info("polling %s for tasks", connection.url)  # failed over, or back
                polled = connection
            slot = self.gate.acquire(connection.url, connection.config.weight)
            if not await self._unless_stopped(slot):
                return
            delay = await self._poll_once(connection)
            if delay is None:
                backoff.reset()
            else:
                await self._unless_stopped(asyncio.sleep(max(delay, backoff.next())))

    async def _poll_once(self, connection: Connection) -> float | None:
        """One poll with a slot held; returns a delay before the next when it failed."""
        held = 1
        handed = 0
        try:
            if self.stopping.is_set() or not connection.up:
                return None
            held += self.gate.try_acquire(self.extra_slots(connection), connection.url)
            try:
                tasks = await connection.poll(self.skills(), self.poll_wait(connection), held)
            except Unavailable as exc:
                connection.mark_down(f"polling failed: {exc}")
                return None
            except RateLimited as exc:
                log.warning("orchestrator %s: %s; polling later", connection.url, exc)
                return exc.retry_after or 0.0
            except Refused as exc:
                if exc.unauthorized or exc.worker_unknown:
                    connection.mark_down(f"poll refused: {exc}")
                    return None
                log.warning("orchestrator %s refused a poll: %s", connection.url, exc)
                return 0.0
            self._empty[connection.url] = not tasks
            self._fall = self._fall + 1 if not tasks else 0
            if len(tasks) > held:
                log.error(
                    "orchestrator %s sent %d tasks for max_tasks=%d; the %d beyond are dropped "
                    "(their leases will expire)",
                    connection.url,
                    len(tasks),
                    held,
                    len(tasks) - held,
                )
            for task in tasks[:held]:
                if self.sink(connection, task):
                    handed += 1  # the task now owns one of the slots
            return None
        finally:
            self.gate.release(held - handed, connection.url)

    async def _unless_stopped(self, awaitable: Awaitable[Any]) -> bool:
        """Await `awaitable` unless the worker starts stopping first (then cancel it)."""
        work = asyncio.ensure_future(awaitable)
        stop = asyncio.ensure_future(self.stopping.wait())
        try:
            await asyncio.wait({work, stop}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for future in (work, stop):
                if not future.done():
                    future.cancel()
            await asyncio.gather(work, stop, return_exceptions=True)
        return work.done() and not work.cancelled() and work.exception() is None
