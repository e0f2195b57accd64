"""Pruning the per-client job indexes, whose entries outlive their jobs.

A job's hash expires `JOB_RETENTION` after it ends, but its entry in the client's index
(`il:{pN}:client:<name>`, a sorted set by creation time) is not a field of that hash and
stayed for ever: 150 bytes a job, 650 MB a day at 50 jobs/s. Redis cannot expire members
of a sorted set, and an old entry may belong to a job that is still alive (waiting for a
person for weeks), so entries are not dropped by age: every `INTERVAL_S` each orchestrator
walks each index, oldest first, `BUDGET` entries per partition and round, and drops those
whose job no longer exists. Several orchestrators doing it at once only repeat work.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable

from engine.runtime.aio import checkpoint
from engine.store.client import Store, StoreUnavailable

log = logging.getLogger("interlock.janitor")

INTERVAL_S = 60.0
BUDGET = 1000  # entries looked at per (client, partition) and round: 8,000 EXISTS a client


class IndexJanitor:
    def __init__(self, store: Store, budget: int = BUDGET) -> None:
        self.store = store
        self.budget = budget
        self._next: dict[tuple[str, int], int] = {}  # where the walk of each index goes on

    async def sweep(self, clients: Iterable[str]) -> int:
        """One round over every index of `clients`; returns the entries dropped."""
        dropped = 0
        for client in sorted(set(clients)):
            for partition in range(self.store.keys.partitions):
                checkpoint()  # a driver call may have absorbed our cancellation
                start = self._next.get((client, partition), 0)
                gone, following = await self.store.prune_client_jobs(
                    partition, client, start, self.budget
                )
                self._next[(client, partition)] = following
                dropped += gone
        return dropped

    async def run(self, clients: Iterable[str], interval_s: float = INTERVAL_S) -> None:
        names = tuple(clients)
        while True:
            checkpoint()
            try:
                dropped = await self.sweep(names)
                if dropped:
                    log.debug("dropped %d expired jobs from the client indexes", dropped)
            except StoreUnavailable as exc:
                checkpoint(exc)
                log.warning("client index pruning: %s", exc)
            checkpoint()
            await asyncio.sleep(interval_s)
