"""Pruning the per-client job indexes, whose entries outlive their jobs.

A job's hash expires `JOB_RETENTION` after it ends, but its entry in the client's index
(`il:{pN}:client:<name>`, a sorted set by creation time) is not a field of that hash and
stayed for ever: 150 bytes a job, 650 MB a day at 50 jobs/s. Redis cannot expire members
of a sorted set, and an old entry may belong to a job that is still alive (waiting for a
person for weeks), so entries are not dropped by age: every `INTERVAL_S` each orchestrator
walks each index, oldest first, `BUDGET` entries per partition and round, and drops those
whose job no longer exists. Several orchestrators doing it at once only repeat work.

Every index is walked, whoever its client: one configured now, one removed from the
configuration since, the single-token client, a schedule's. The janitor finds them in each
partition's set of client names (`Keys.client_names`), which the commit creating a job
writes with its index entry; a client whose index there is empty leaves the set. Indexes
written before that set existed are added to it once per store, with a SCAN on every
master (`Store.register_old_client_indexes`).
"""

from __future__ import annotations

import asyncio
import logging
import random
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

    async def sweep(self, clients: Iterable[str] = ()) -> int:
        """One round over every client index (of the clients registered in the store, and of
        `clients`); returns the entries dropped."""
        dropped = 0
        configured = set(clients)
        for partition in range(self.store.keys.partitions):
            checkpoint()  # a driver call may have absorbed our cancellation
            names = configured.union(await self.store.indexed_clients(partition))
            for client in sorted(names):
                checkpoint()
                start = self._next.get((client, partition), 0)
                gone, following = await self.store.prune_client_jobs(
                    partition, client, start, self.budget
                )
                if following:
                    self._next[(client, partition)] = following
                else:  # (the walk starts over; forget a client that may never come back)
                    self._next.pop((client, partition), None)
                dropped += gone
        return dropped

    async def run(
        self,
        clients: Iterable[str] = (),
        interval_s: float = INTERVAL_S,
        first_s: float | None = None,
    ) -> None:
        """Sweep every `interval_s`, the first round after `first_s` (default: a random
        point of the first interval, so orchestrators started together do not sweep
        together, and a start-up is not slowed by a sweep: nothing here is urgent)."""
        names = tuple(clients)
        registered = False
        await asyncio.sleep(random.uniform(0, interval_s) if first_s is None else first_s)
        while True:
            checkpoint()
            try:
                if not registered:
                    await self.store.register_old_client_indexes()
                    registered = True
                dropped = await self.sweep(names)
                if dropped:
                    log.debug("dropped %d expired jobs from the client indexes", dropped)
            except StoreUnavailable as exc:
                checkpoint(exc)
                log.warning("client index pruning: %s", exc)
            checkpoint()
            await asyncio.sleep(interval_s)
