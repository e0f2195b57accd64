"""Typed application state: the `web.AppKey`s and request keys shared by the API modules.

Values live on the one application (`request.app`: the API areas are routes of it, not
sub-applications, see server/routing.py), so nothing is global: two apps in one process
share nothing.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

from aiohttp import web

from engine.runtime.orchestrator import Orchestrator
from server.auth import ClientAuth, WorkerAuth
from server.config import Settings
from server.metrics import Metrics
from server.offload import Offload

T = TypeVar("T")

SETTINGS = web.AppKey("settings", Settings)
ORCHESTRATOR = web.AppKey("orchestrator", Orchestrator)
CLIENT_AUTH = web.AppKey("client_auth", ClientAuth)
WORKER_AUTH = web.AppKey("worker_auth", WorkerAuth)
METRICS = web.AppKey("metrics", Metrics)  # absent when METRICS=off
OFFLOAD = web.AppKey("offload", Offload)  # large bodies are parsed and checked on threads
CLOSING = web.AppKey("closing", asyncio.Event)  # set when the server starts shutting down
# The request tasks waiting in `unless_closing`.
LONG_POLLS: web.AppKey[set[asyncio.Task[Any]]] = web.AppKey("long_polls")

CLIENT = web.RequestKey("client", str)  # the authenticated client name
WORKER = web.RequestKey("worker", str)  # the authenticated worker id


def orchestrator(request: web.Request) -> Orchestrator:
    return request.app[ORCHESTRATOR]


def settings(request: web.Request) -> Settings:
    return request.app[SETTINGS]


def public_base(request: web.Request) -> str:
    """Where people reach this server: PUBLIC_URL, or else the address the connection came
    in on. Never the request's Host header: anyone can write one, and a link built from it
    would send an approval token to their host."""
    configured = request.app[SETTINGS]
    if configured.public_url:
        return configured.public_url
    sockname = request.transport.get_extra_info("sockname") if request.transport else None
    if isinstance(sockname, tuple) and len(sockname) >= 2:
        host, port = str(sockname[0]), int(sockname[1])
    else:  # a Unix socket, or a closed transport: the configured address
        host, port = configured.host, configured.port
    host = f"[{host}]" if ":" in host else host
    scheme = (
        "https" if request.transport and request.transport.get_extra_info("sslcontext") else "http"
    )
    return f"{scheme}://{host}:{port}"


async def unless_closing(request: web.Request, work: Coroutine[Any, Any, T], fallback: T) -> T:
    """Await `work` (a long poll), or give `fallback` as soon as the server shuts down, so
    that long polls never hold a graceful shutdown for their full duration. The work runs
    in the request's own task, which the shutdown cancels (see `release_long_polls`)."""
    if request.app[CLOSING].is_set():
        work.close()  # never started, so nothing to undo
        return fallback
    task = asyncio.current_task()
    assert task is not None
    polls = request.app[LONG_POLLS]
    polls.add(task)
    try:
        return await work
    except asyncio.CancelledError:
        # The shutdown's cancellation ends the wait; any other (the request's) goes on.
        if request.app[CLOSING].is_set() and task.uncancel() == 0:
            return fallback
        raise
    finally:
        polls.discard(task)


def release_long_polls(app: web.Application) -> None:
    """Shutting down: every long poll answers now (see `unless_closing`)."""
    app[CLOSING].set()
    polls: set[asyncio.Task[Any]] = app[LONG_POLLS]
    for task in list(polls):
        task.cancel()
