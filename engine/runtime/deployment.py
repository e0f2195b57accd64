"""Notice a wiped store: a Redis without persistence that restarts (or a FLUSHALL) loses
every accepted job, and nothing else would tell. The first process to start on a Redis
writes a deployment marker (`Store._check_partitions`); each process checks now and then
that the marker it saw is still there, and once it is not, logs at ERROR (again every
`REPEAT_S` while the process runs) and reports it in `GET /_public/status`."""

from __future__ import annotations

import asyncio
import logging
import time

from engine.runtime.aio import Throttle, checkpoint
from engine.store.client import Store, StoreUnavailable, redact

log = logging.getLogger("interlock.store")
throttle = Throttle(log)

CHECK_INTERVAL_S = 2.0
REPEAT_S = 300.0
WIPED_MESSAGE = (
    "the job store was wiped: the deployment marker this orchestrator saw at start is gone, "
    "so every job accepted before is lost (a Redis without persistence restarted, or it was "
    "flushed); turn on AOF persistence (appendonly yes) and restart the orchestrators"
)


async def watch(store: Store, interval_s: float = CHECK_INTERVAL_S) -> None:
    """Check the marker every `interval_s` for as long as the orchestrator runs."""
    reported: float | None = None
    while True:
        checkpoint()
        await asyncio.sleep(interval_s)
        try:
            intact = await store.check_marker()
        except StoreUnavailable as exc:
            if store.wiped_at is None:
                throttle.warning("marker", "cannot check the deployment marker: %s", exc)
                continue
            intact = False  # found wiped, but the settings could not be written again yet
        if not intact and (reported is None or time.monotonic() - reported >= REPEAT_S):
            reported = time.monotonic()
            log.error("%s (Redis at %s)", WIPED_MESSAGE, redact(store.url))
