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
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from engine.jsonutil import loads
from engine.runtime.aio import Throttle, checkpoint
from engine.store.client import Store, StoreUnavailable

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

    @property
    def free(self) -> int:
        """How many more tasks to lease for this poll (none once it has one: answer)."""
        if self.tasks or self.expired or self.future.done():
            return 0
        return self.capacity - self.claims


class Dispatcher:
    def __init__(self, store: Store) -> None:
        self.store = store
        self.partitions = store.keys.partitions
        self.waiters: dict[str, deque[Waiter]] = {}
        self.hints: set[tuple[str, int]] = set()
        self.wake = asyncio.Event()
        self.closed = False
        # Told of each lease the pump makes: job id, task id, the job's new version, the lease.
        self.on_lease: Callable[[str, str, int, str], None] = lambda *made: None

    # -- called by request handlers ------------------------------------------------------------

    async def next_task(
        self, worker_id: str, skills: tuple[str, ...], wait_s: float
    ) -> dict[str, Any] | None:
        """A leased task payload for this worker, or None after `wait_s` seconds."""
        tasks = await self.next_tasks(worker_id, skills, wait_s, 1)
        return tasks[0] if tasks else None

    async def next_tasks(
        self, worker_id: str, skills: tuple[str, ...], wait_s: float, max_tasks: int
    ) -> list[dict[str, Any]]:
        """Up to `max_tasks` leased task payloads for this worker, or [] after `wait_s`."""
        if self.closed:
            return []
        if not skills:
            await asyncio.sleep(min(wait_s, 1.0))
            return []
        waiter = Waiter(worker_id, skills, max(1, max_tasks))
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
        self.hints.add((task_type, partition))
        self.wake.set()

    # -- direct hand-off: a task leased in the same commit that creates it ---------------------

    def claim(self, task_type: str) -> Waiter | None:
        """A waiting poll that takes a task of this type, with one place reserved for it;
        the caller then calls `deliver` (the lease was committed) or `unclaim`.

        None while tasks of this type may be queued (a hint is open): those go first, or a
        steady stream of new tasks could keep older and higher-priority ones waiting."""
        if any(hinted == task_type for hinted, _ in self.hints):
            return None
        for waiter in self.waiters.get(task_type, ()):
            if waiter.free > 0:
                waiter.claims += 1
                return waiter
        return None

    def deliver(self, waiter: Waiter, task: dict[str, Any]) -> None:
        waiter.claims -= 1
        if not waiter.future.done():
            waiter.tasks.append(task)
        self._settle(waiter)

    def unclaim(self, waiter: Waiter) -> None:
        waiter.claims -= 1
        self._settle(waiter)

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
                self.hints.update((task_type, p) for p in range(self.partitions))

    def _slots(self, task_type: str) -> list[Waiter]:
        """One entry per task the waiting polls of this type can take, oldest poll first."""
        slots: list[Waiter] = []
        for waiter in self.waiters.get(task_type, ()):
            slots.extend([waiter] * waiter.free)
            if len(slots) >= MAX_LEASE:
                break
        return slots[:MAX_LEASE]

    async def _pump(self) -> None:
        while self.hints:
            # A fresh order each pass: walking the hints in one fixed order let the first
            # partitions take every waiting worker while the others' tasks aged.
            hints = list(self.hints)
            random.shuffle(hints)
            wanted = {task_type: len(self._slots(task_type)) for task_type, _ in hints}
            # Hints for types nobody waits for stay: the next worker to ask will want them.
            asks = [(task_type, partition) for task_type, partition in hints if wanted[task_type]]
            if not asks:
                return
            found = await self.store.peek_many([(t, p, wanted[t]) for t, p in asks])
            progress = False
            for (task_type, partition), members in zip(asks, found, strict=True):
                if not members:
                    self.hints.discard((task_type, partition))
                    continue
                progress |= await self._lease(task_type, partition, members)
            if not progress:
                return

    async def _lease(self, task_type: str, partition: int, members: list[str]) -> bool:
        # Polls may have gone or been served while we peeked; claim what is still free.
        slots = self._slots(task_type)[: len(members)]
        if not slots:
            return False
        for waiter in slots:
            waiter.claims += 1
        try:
            leases = await self.store.lease(
                partition,
                task_type,
                members[: len(slots)],
                [w.worker_id for w in slots],
                int(time.time() * 1000),
            )
        except BaseException:
            for waiter in slots:
                self.unclaim(waiter)
            raise
        for waiter, made in zip(slots, leases, strict=False):
            assert waiter.worker_id == made.worker
            self.on_lease(made.job_id, made.task_id, made.version, made.lease)
            self.deliver(waiter, loads(made.payload))
        for waiter in slots[len(leases) :]:
            self.unclaim(waiter)
        return bool(leases)

    def _forget(self, waiter: Waiter) -> None:
        for skill in waiter.skills:
            queue = self.waiters.get(skill)
            if queue is None:
                continue
            with contextlib.suppress(ValueError):
                queue.remove(waiter)
            if not queue:
                del self.waiters[skill]
