"""Long polls for pages that follow jobs live (the web console): they hold the request until
what the caller has seen changes, or the wait ends.

- `GET /api/v1/jobs/{id}/changes?since=C&wait=S`: `{"job_id", "change", "status"}` once the
  job's change counter differs from `since` (at once without `since`, or for an ended job).
- `GET /api/v1/jobs?...&since=C&wait=S`: the page, with its `change` token, once the page
  differs from the one whose token is `since`.

A change applied by this server wakes the poll at once (`Store.changes`); one applied by
another orchestrator is seen within RECHECK_S, when the poll re-reads.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from engine.jsonutil import dumps
from engine.runtime.jobdoc import TERMINAL
from engine.store.changes import changed
from engine.store.client import JobRecord
from server.errors import BadRequest
from server.state import CLOSING, orchestrator, unless_closing

RECHECK_S = 1.0  # the longest a change made by another orchestrator goes unseen
SETTLE_S = 0.2  # after a change, the list waits at least this long: a burst costs one listing
MAX_SINCE = 64


def since_of(request: web.Request) -> str | None:
    since = request.query.get("since") or None
    if since is not None and len(since) > MAX_SINCE:
        raise BadRequest(
            "query parameter since must be a change value from a previous answer",
            code="invalid_query",
        )
    return since


def _closing(request: web.Request) -> bool:
    """The server shuts down, or the caller has gone: aiohttp does not cancel a handler whose
    client disconnected, and a page that navigates away leaves its poll behind."""
    transport = request.transport
    gone = transport is None or transport.is_closing()
    return gone or request.app[CLOSING].is_set()


async def job_when_changed(
    request: web.Request, job_id: str, client: str, since: str | None, wait_s: float
) -> JobRecord | None:
    """The job once its version differs from `since`, it has ended, or the wait is over;
    None if this client cannot see it."""
    orch = orchestrator(request)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait_s
    while True:
        # Watch before reading: a change landing between the read and the wait still wakes.
        with orch.watch_changes(job_id) as future:
            record = await orch.read(job_id, client)
            remaining = deadline - loop.time()
            if (
                record is None
                or str(record.version) != since
                or record.doc["status"] in TERMINAL
                or remaining <= 0
                or _closing(request)
            ):
                return record
            await unless_closing(request, changed(future, min(RECHECK_S, remaining)), False)


def page_token(body: dict[str, Any]) -> str:
    return hashlib.sha256(dumps(body).encode()).hexdigest()[:16]


async def page_when_changed(
    request: web.Request,
    since: str | None,
    wait_s: float,
    page: Callable[[], Awaitable[dict[str, Any]]],
) -> dict[str, Any]:
    """`page()` with its `change` token, once the token differs from `since` or the wait
    is over. Any job change applied by this server makes it list again."""
    orch = orchestrator(request)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait_s
    while True:
        with orch.watch_changes(None) as future:
            started = loop.time()
            body = await page()
            token = page_token(body)
            # A filtered listing may read every job of the client (seconds, with 10,000
            # of them): wait at least 4x as long as it took before listing again, so a
            # waiting page spends at most a fifth of its time listing.
            pause = max(SETTLE_S, 4 * (loop.time() - started))
            remaining = deadline - loop.time()
            if token != since or remaining <= 0 or _closing(request):
                return {**body, "change": token}
            wait = min(max(RECHECK_S, pause), remaining)
            woke = await unless_closing(request, changed(future, wait), False)
        if woke:
            # Let a burst of changes settle: one listing per burst, not one per commit.
            settle = min(pause, deadline - loop.time())
            await unless_closing(request, asyncio.sleep(max(0.0, settle)), None)
        if deadline - loop.time() <= 0 or _closing(request):
            return {**body, "change": token}  # as the caller has it; it asks again
