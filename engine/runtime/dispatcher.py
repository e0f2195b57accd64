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
from dataclasses import dataclass, field
from typing import Any

from engine.jsonutil import loads
from engine.runtime.aio import Throttle, checkpoint
from engine.store.client import Store, StoreUnavailable

log = logging.getLogger("interlock.dispatcher")
throttle = Throttle(log)

SWEEP_INTERVAL_S = 1.0


@dataclass(eq=False)
class Waiter:
    worker_id: str
    skills: tuple[str, ...]
    future: asyncio.Future[dict[str, Any] | None] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )
    claimed: bool = False  # the pump is leasing a task for this waiter
    expired: bool = False  # the poll's time is up; answer None unless a lease lands


class Dispatcher:
    def __init__(self, store: Store) -> None:
        self.store = store
        self.partitions = store.keys.partitions
        self.waiters: dict[str, deque[Waiter]] = {}
        self.hints: set[tuple[str, int]] = set()
        self.wake = asyncio.Event()
        self.closed = False

    # -- called by request handlers ------------------------------------------------------------

    async def next_task(
        self, worker_id: str, skills: tuple[str, ...], wait_s: float
    ) -> dict[str, Any] | None:
        """A leased task payload for this worker, or None after `wait_s` seconds."""
        if self.closed:
            return None
        if not skills:
            await asyncio.sleep(min(wait_s, 1.0))
            return None
        waiter = Waiter(worker_id, skills)
        for skill in skills:
            queue = self.waiters.setdefault(skill, deque())
            if not queue:  # nobody was waiting for this type: its queues may hold work
                self.hints.update((skill, p) for p in range(self.partitions))
            queue.append(waiter)
        self.wake.set()
        try:
            async with asyncio.timeout(wait_s):
                return await asyncio.shield(waiter.future)
        except TimeoutError:
            waiter.expired = True
            if waiter.claimed:  # the pump is leasing for us right now; take its answer
                return await waiter.future
            return None
        finally:
            self._forget(waiter)
            if not waiter.future.done():
                waiter.future.cancel()

    async def next_tasks(
        self, worker_id: str, skills: tuple[str, ...], wait_s: float, max_tasks: int
    ) -> list[dict[str, Any]]:
        task = await self.next_task(worker_id, skills, wait_s)
        return [] if task is None else [task]

    def close(self) -> None:
        """Shutting down: answer every waiting poll now (no task) and take no new ones.
        Polls the pump is leasing for still get their task."""
        self.closed = True
        for queue in list(self.waiters.values()):
            for waiter in list(queue):
                waiter.expired = True
                if not waiter.claimed and not waiter.future.done():
                    waiter.future.set_result(None)

    def task_queued(self, task_type: str, partition: int) -> None:
        self.hints.add((task_type, partition))
        self.wake.set()

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
            if any(not w.claimed for w in queue):
                self.hints.update((task_type, p) for p in range(self.partitions))

    async def _pump(self) -> None:
        while self.hints:
            progress = False
            # A fresh order each pass: walking the hints in one fixed order let the first
            # partitions take every waiting worker while the others' tasks aged.
            hints = list(self.hints)
            random.shuffle(hints)
            for task_type, partition in hints:
                waiting = [w for w in self.waiters.get(task_type, ()) if not w.claimed]
                if not waiting:
                    continue  # keep the hint: the next worker to ask will want it
                members = await self.store.peek(partition, task_type, len(waiting))
                if not members:
                    self.hints.discard((task_type, partition))
                    continue
                progress |= await self._lease(task_type, partition, members)
            if not progress:
                return

    async def _lease(self, task_type: str, partition: int, members: list[str]) -> bool:
        # Waiters may have gone while we peeked; claim the ones still there.
        waiting = [w for w in self.waiters.get(task_type, ()) if not w.claimed][: len(members)]
        if not waiting:
            return False
        for waiter in waiting:
            waiter.claimed = True
        try:
            leases = await self.store.lease(
                partition,
                task_type,
                members[: len(waiting)],
                [w.worker_id for w in waiting],
                int(time.time() * 1000),
            )
        except BaseException:
            self._release(waiting)
            raise
        served = 0
        for waiter, (worker_id, payload) in zip(waiting, leases, strict=False):
            assert waiter.worker_id == worker_id
            if not waiter.future.done():
                waiter.future.set_result(loads(payload))
            served += 1
        self._release(waiting[served:])
        return served > 0

    @staticmethod
    def _release(waiters: list[Waiter]) -> None:
        for waiter in waiters:
            waiter.claimed = False
            if waiter.expired and not waiter.future.done():
                waiter.future.set_result(None)

    def _forget(self, waiter: Waiter) -> None:
        for skill in waiter.skills:
            queue = self.waiters.get(skill)
            if queue is None:
                continue
            with contextlib.suppress(ValueError):
                queue.remove(waiter)
            if not queue:
                del self.waiters[skill]
