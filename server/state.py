"""Typed application state: the `web.AppKey`s and request keys shared by the API modules.

Values live on the root application (handlers of sub-applications read them through
`request.config_dict`), so nothing is global: two apps in one process share nothing.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

from aiohttp import web

from engine.runtime.orchestrator import Orchestrator
from server.auth import ClientAuth, WorkerAuth
from server.config import Settings

T = TypeVar("T")

SETTINGS = web.AppKey("settings", Settings)
ORCHESTRATOR = web.AppKey("orchestrator", Orchestrator)
CLIENT_AUTH = web.AppKey("client_auth", ClientAuth)
WORKER_AUTH = web.AppKey("worker_auth", WorkerAuth)
CLOSING = web.AppKey("closing", asyncio.Event)  # set when the server starts shutting down

CLIENT = web.RequestKey("client", str)  # the authenticated client name
WORKER = web.RequestKey("worker", str)  # the authenticated worker id


def orchestrator(request: web.Request) -> Orchestrator:
    return request.config_dict[ORCHESTRATOR]


def settings(request: web.Request) -> Settings:
    return request.config_dict[SETTINGS]


def public_base(request: web.Request) -> str:
    """Where people reach this server: PUBLIC_URL, or else the origin of this request."""
    return request.config_dict[SETTINGS].public_url or str(request.url.origin())


async def unless_closing(request: web.Request, work: Coroutine[Any, Any, T], fallback: T) -> T:
    """Await `work` (a long poll), or give `fallback` as soon as the server shuts down, so
    that long polls never hold a graceful shutdown for their full duration."""
    closing = request.config_dict[CLOSING]
    if closing.is_set():
        work.close()  # never started, so nothing to undo
        return fallback
    task = asyncio.ensure_future(work)
    stop = asyncio.ensure_future(closing.wait())
    try:
        await asyncio.wait({task, stop}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for pending in (task, stop):
            pending.cancel()  # a no-op for the one that finished
        # Neither may outlive the request, even when the request itself is cancelled.
        await asyncio.gather(task, stop, return_exceptions=True)
    if task.cancelled():
        return fallback
    return task.result()
