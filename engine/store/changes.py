"""In-process notice of job changes, for long polls that answer as soon as a job changes.

The store tells `Changes` about every job it changed itself (commits and leases), after
Redis accepted the change. A change applied by another process (another orchestrator on
the same Redis) is not announced here, so a waiter also gives up after a short interval and
re-reads the job: such changes are seen within that interval.

With nobody waiting, `notify` returns at once: the commit path pays one emptiness check.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Iterator
from contextlib import contextmanager


class Changes:
    def __init__(self) -> None:
        self._by_job: dict[str, set[asyncio.Future[None]]] = {}
        self._any: set[asyncio.Future[None]] = set()

    def notify(self, job_ids: Iterable[str]) -> None:
        """Jobs `job_ids` changed: wake whoever waits for them, or for any job."""
        if not self._by_job and not self._any:
            return
        woken = False
        for job_id in job_ids:
            woken = True
            for future in self._by_job.pop(job_id, ()):
                if not future.done():
                    future.set_result(None)
        if woken:
            waiters, self._any = self._any, set()
            for future in waiters:
                if not future.done():
                    future.set_result(None)

    @contextmanager
    def watch(self, job_id: str | None) -> Iterator[asyncio.Future[None]]:
        """A future that completes when job `job_id` (or any job, for None) changes next.
        Enter it *before* reading the job, so that a change between the read and the wait
        is not missed."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        waiters = self._any if job_id is None else self._by_job.setdefault(job_id, set())
        waiters.add(future)
        try:
            yield future
        finally:
            future.cancel()
            waiters.discard(future)
            if job_id is not None and not waiters and self._by_job.get(job_id) is waiters:
                del self._by_job[job_id]


async def changed(future: asyncio.Future[None], timeout_s: float) -> bool:
    """Wait up to `timeout_s` for a `watch` future; True if the job changed meanwhile."""
    if timeout_s <= 0:
        return future.done()
    done, _ = await asyncio.wait([future], timeout=timeout_s)
    return bool(done)
