"""Hands queued tasks to long-polling workers.

Waiting workers are futures in this process, not Redis connections: one background pump
per orchestrator leases tasks for all of them, so 1,000 idle workers cost no Redis
connection at all. The pump learns where work may be from three sources: tasks this
process queued, `ready` notifications from other orchestrators, and a periodic sweep that
covers any notification lost while the subscription was down.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from engine.clock import now_ms
from engine.jsonutil import loads
from engine.runtime.aio import Throttle, checkpoint
from engine.runtime.ratelimit import RateLimit
from engine.store.client import LeaseBatch, Store, StoreUnavailable

log = logging.getLogger("interlock.dispatcher")
throttle = Throttle(log)

SWEEP_INTERVAL_S = 1.0
MAX_LEASE = 100  # tasks leased by one script


@dataclass(eq=False)
class Waiter:
    """One open poll: it takes up to `capacity` tasks, and answers as soon as it has one
    and no lease for it is still on its way (leases made together arrive together)."""

    worker_id: str
    skills: tuple[str, ...]
    capacity: int = 1
    future: asyncio.Future[list[dict[str, Any]]] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )
    tasks: list[dict[str, Any]] = field(default_factory=list)
    claims: int = 0  # leases being made for this poll right now
    expired: bool = False  # the poll's time is up; answer once the claims settle
    # Queued tasks may be waiting for this poll: the dispatcher looks at the queues before
    # any new task is handed to it (so a stream of new tasks cannot keep them waiting).
    queue_first: bool = False
    # Whether the poll's connection is closed (its worker died): checked before each lease,
    # so that a dead connection is never handed a task.
    gone: Callable[[], bool] = lambda: False

    @property
    def free(self) -> int:
        """How many more tasks to lease for this poll (none once it has one: answer)."""
        if self.tasks or self.expired or self.future.done() or self.gone():
            return 0
        return self.capacity - self.claims


class Dispatcher:
    def __init__(self, store: Store, rate_limits: Sequence[RateLimit] = ()) -> None:
        self.store = store
        # Task types leased at a limited rate (engine/runtime/ratelimit.py): only by the pump.
        self.limits = {limit.task_type: limit for limit in rate_limits}
        self.partitions = store.keys.partitions
        self.waiters: dict[str, deque[Waiter]] = {}
        # (task type, partition) that may hold queued work -> when that was last said (a
        # counter): a hint is dropped only if nothing re-raised it while we looked.
        self.hints: dict[tuple[str, int], int] = {}
        self._said = 0
        self.wake = asyncio.Event()
        self.closed = False
        # Told of each lease the pump makes: job id, task id, the job's new version, the lease.
        self.on_lease: Callable[[str, str, int, str], None] = lambda *made: None
        # Told of a task leased to a poll that can no longer take it (worker id, task).
        self.on_undelivered: Callable[[str, dict[str, Any]], None] = lambda *lost: None

    # -- called by request handlers ------------------------------------------------------------

    async def next_task(
        self, worker_id: str, skills: tuple[str, ...], wait_s: float
    ) -> dict[str, Any] | None:
        """A leased task payload for this worker, or None after `wait_s` seconds."""
        tasks = await self.next_tasks(worker_id, skills, wait_s, 1)
        return tasks[0] if tasks else None

    async def next_tasks(
        self,
        worker_id: str,
        skills: tuple[str, ...],
        wait_s: float,
        max_tasks: int,
        gone: Callable[[], bool] | None = None,
    ) -> list[dict[str, Any]]:
        """Up to `max_tasks` leased task payloads for this worker, or [] after `wait_s`.
        `gone()` tells whether the poll's connection has closed: such a poll gets no task."""
        if self.closed:
            return []
        if not skills:
            await asyncio.sleep(min(wait_s, 1.0))
            return []
        waiter = Waiter(worker_id, skills, max(1, max_tasks))
        if gone is not None:
            waiter.gone = gone
        for skill in skills:
            queue = self.waiters.setdefault(skill, deque())
            if not queue:  # nobody was waiting for this type: its queues may hold work
                self._hint_all(skill)
            queue.append(waiter)
        waiter.queue_first = any(t in skills for t, _ in self.hints)
        self.wake.set()
        try:
            async with asyncio.timeout(wait_s):
                return await asyncio.shield(waiter.future)
        except TimeoutError:
            waiter.expired = True
            self._settle(waiter)
            return await waiter.future  # at once, or when the leases on their way land
        finally:
            self._forget(waiter)
            if not waiter.future.done():
                waiter.future.cancel()

    def close(self) -> None:
        """Shutting down: answer every waiting poll now (no task) and take no new ones.
        Polls a lease is being made for still get their task."""
        self.closed = True
        for queue in list(self.waiters.values()):
            for waiter in list(queue):
                waiter.expired = True
                self._settle(waiter)

    def task_queued(self, task_type: str, partition: int) -> None:
        self._hint(task_type, partition)
        self.wake.set()

    # -- direct hand-off: a task leased in the same commit that creates it ---------------------

    def claim(self, task_type: str) -> Waiter | None:
        """A waiting poll that takes a task of this type, with one place reserved for it;
        the caller then calls `deliver` (the lease was committed) or `unclaim`.

        A poll that queued tasks may be waiting for is left to the dispatcher until it has
        looked at the queues: those go first, or a steady stream of new tasks could keep
        older and higher-priority ones waiting."""
        if task_type in self.limits:  # leased with a token only, by the pump
            return None
        for waiter in self.waiters.get(task_type, ()):
            if waiter.free > 0 and not waiter.queue_first:
                waiter.claims += 1
                return waiter
        return None

    def deliver(self, waiter: Waiter, task: dict[str, Any]) -> None:
        waiter.claims -= 1
        if waiter.future.done() or len(waiter.tasks) >= waiter.capacity or waiter.gone():
            # The poll is gone (its request ended meanwhile): the task is leased to a
            # worker that will never see it. Put it back now rather than when the lease
            # times out.
            self.on_undelivered(waiter.worker_id, task)
        else:
            waiter.tasks.append(task)
        self._settle(waiter)

    def unclaim(self, waiter: Waiter) -> None:
        waiter.claims -= 1
        self._settle(waiter)
        if waiter.free > 0 and any(t in waiter.skills for t, _ in self.hints):
            self.wake.set()  # room again while work may be queued: look now, not at the sweep

    @staticmethod
    def _settle(waiter: Waiter) -> None:
        if waiter.claims == 0 and not waiter.future.done() and (waiter.tasks or waiter.expired):
            waiter.future.set_result(waiter.tasks)

    # -- the pump --------------------------------------------------------------------------------

    async def run(self) -> None:
        last_sweep = time.monotonic()
        while True:
            checkpoint()
            try:
                async with asyncio.timeout(SWEEP_INTERVAL_S):
                    await self.wake.wait()
            except TimeoutError:
                pass
            self.wake.clear()
            if time.monotonic() - last_sweep >= SWEEP_INTERVAL_S:
                last_sweep = time.monotonic()
                self._sweep()
            try:
                await self._pump()
            except StoreUnavailable as exc:
                checkpoint(exc)
                throttle.warning("lease", "cannot lease tasks: %s", exc)
                await asyncio.sleep(0.5)
                self.wake.set()

    def _sweep(self) -> None:
        for task_type, queue in self.waiters.items():
            if any(w.free > 0 for w in queue):
                self._hint_all(task_type)

    def _room(self, task_type: str) -> int:
        """How many tasks of this type the waiting polls can take (at most MAX_LEASE)."""
        return min(MAX_LEASE, sum(w.free for w in self.waiters.get(task_type, ())))

    async def _pump(self) -> None:
        await self._pump_hinted()
        if not self.hints:  # nothing is queued, as far as we know: polls take new tasks
            self._looked({w for queue in self.waiters.values() for w in queue})

    async def _pump_hinted(self) -> None:
        while self.hints:
            # A fresh order each pass: walking the hints in one fixed order let the first
            # partitions take every waiting worker while the others' tasks aged.
            hints = list(self.hints.items())
            random.shuffle(hints)
            looked = {w for task_type, _ in self.hints for w in self.waiters.get(task_type, ())}
            wanted = {task_type: self._room(task_type) for (task_type, _), _ in hints}
            # Hints for types nobody waits for stay: the next worker to ask will want them.
            asks = [(key, said) for key, said in hints if wanted[key[0]]]
            if not asks:
                self._looked(looked)
                return
            found = await self.store.peek_many([(t, p, wanted[t]) for (t, p), _ in asks])
            offered = [
                (task_type, partition, members)
                for ((task_type, partition), _), members in zip(asks, found, strict=True)
            ]
            granted = await self._take_tokens(offered, wanted) if self.limits else {}
            if granted:
                offered = _rationed(offered, granted)
            leased = await self._lease(offered)
            if granted:
                await self._give_back(offered, leased, granted)
            for ((task_type, partition), said), members, count in zip(
                asks, found, leased, strict=True
            ):
                if len(members) < wanted[task_type] and count == len(members):
                    # We saw that queue whole (or empty) and leased all of it: it is empty
                    # now, unless a task came since, which re-raised the hint.
                    self._settled(task_type, partition, said)
            self._looked(looked)
            if not any(leased):
                return

    async def _take_tokens(
        self, offered: list[tuple[str, int, list[str]]], wanted: dict[str, int]
    ) -> dict[str, int]:
        """Tokens for the rate-limited types among `offered`: as many as tasks were found
        and polls can take, from each type's bucket in one round trip. When a bucket runs
        short, the pump is woken again once its next token is due."""
        found: dict[str, int] = {}
        for task_type, _, members in offered:
            if task_type in self.limits:
                found[task_type] = found.get(task_type, 0) + len(members)
        asks = [
            (t, min(n, wanted[t]), self.limits[t].rate, self.limits[t].burst)
            for t, n in found.items()
            if n
        ]
        if not asks:
            return {}
        answers = await self.store.take_tokens(asks)
        granted: dict[str, int] = {}
        for (task_type, count, _, _), (got, next_ms) in zip(asks, answers, strict=True):
            granted[task_type] = got
            if got < count:  # the rest waits for tokens: look again when one is due
                delay = max(next_ms, 1) / 1000
                asyncio.get_running_loop().call_later(delay, self.wake.set)
        return granted

    async def _give_back(
        self, offered: list[tuple[str, int, list[str]]], leased: list[int], granted: dict[str, int]
    ) -> None:
        """Return the tokens taken for leases that were not made (a task went meanwhile)."""
        used: dict[str, int] = {}
        for (task_type, _, _), count in zip(offered, leased, strict=True):
            used[task_type] = used.get(task_type, 0) + count
        unused = [
            (t, -(got - used.get(t, 0)), self.limits[t].rate, self.limits[t].burst)
            for t, got in granted.items()
            if got > used.get(t, 0)
        ]
        if unused:
            await self.store.take_tokens(unused)

    @staticmethod
    def _looked(waiters: set[Waiter]) -> None:
        """The queues have been offered to these polls: new tasks may go to them now."""
        for waiter in waiters:
            waiter.queue_first = False

    def _hint(self, task_type: str, partition: int) -> None:
        self._said += 1
        self.hints[(task_type, partition)] = self._said

    def _hint_all(self, task_type: str) -> None:
        for partition in range(self.partitions):
            self._hint(task_type, partition)

    def _settled(self, task_type: str, partition: int, said: int) -> None:
        """The queue was empty when we looked: drop its hint, unless raised again since."""
        if self.hints.get((task_type, partition)) == said:
            del self.hints[(task_type, partition)]

    async def _lease(self, queues: list[tuple[str, int, list[str]]]) -> list[int]:
        """Lease the members found in each queue (task type, partition, members) to the polls
        waiting for their type, all in one round trip; how many from each queue.

        Every place is claimed before any lease lands, so a poll answers with what this
        pass leased it from all queues, not with the first queue's share."""
        # Polls may have gone or been served while we peeked; claim what is still free (a
        # claim counts at once, so a poll waiting for several types is never promised twice).
        batches: list[LeaseBatch] = []
        served: list[list[Waiter]] = []
        for task_type, partition, members in queues:
            slots: list[Waiter] = []
            for waiter in self.waiters.get(task_type, ()):
                take = min(waiter.free, len(members) - len(slots))
                if take > 0:
                    waiter.claims += take
                    slots += [waiter] * take
                if len(slots) == len(members):
                    break
            served.append(slots)
            if slots:
                batch = LeaseBatch(
                    partition, task_type, members[: len(slots)], [w.worker_id for w in slots]
                )
                batches.append(batch)
        try:
            made = await self.store.lease(batches, now_ms()) if batches else []
        except BaseException:
            for slots in served:
                for waiter in slots:
                    self.unclaim(waiter)
            raise
        results = iter(made)
        counts: list[int] = []
        for slots in served:
            leases = next(results) if slots else []
            for waiter, lease in zip(slots, leases, strict=False):
                assert waiter.worker_id == lease.worker
                self.on_lease(lease.job_id, lease.task_id, lease.version, lease.lease)
                self.deliver(waiter, loads(lease.payload))
            for waiter in slots[len(leases) :]:
                self.unclaim(waiter)
            counts.append(len(leases))
        return counts

    def _forget(self, waiter: Waiter) -> None:
        for skill in waiter.skills:
            queue = self.waiters.get(skill)
            if queue is None:
                continue
            with contextlib.suppress(ValueError):
                queue.remove(waiter)
            if not queue:
                del self.waiters[skill]


def _rationed(
    offered: list[tuple[str, int, list[str]]], granted: dict[str, int]
) -> list[tuple[str, int, list[str]]]:
    """`offered` with each rate-limited type's members cut to the tokens granted for it."""
    left = dict(granted)
    out = []
    for task_type, partition, members in offered:
        if task_type in left:
            take = min(left[task_type], len(members))
            left[task_type] -= take
            members = members[:take]
        out.append((task_type, partition, members))
    return out
