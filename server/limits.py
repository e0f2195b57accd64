"""Slow and greedy clients: bounded connections, bounded time to send headers.

aiohttp reads headers and bodies for as long as a client cares to send them. 1,100
connections that each send a header byte every 10 s used every file descriptor of a
1,024-descriptor process, and every normal request failed. `GuardedSite` is aiohttp's
TCPSite with two limits on each connection:
- at most `max_connections` open at once: one more is closed as soon as it is accepted,
  before it costs more than its socket;
- every request's headers must be complete within `header_timeout_s`, or the connection
  is closed: the first request's from the connect, a later one's (on a kept-alive
  connection) from its first byte. An idle keep-alive connection, which has sent nothing
  since its last request, is closed after 75 s (the runner's keep-alive timeout,
  server/main.py). A worker's long poll has sent its headers: not affected.
A body must arrive within `BODY_TIMEOUT` (server/params.py answers 408 otherwise).

`raise_descriptor_limit()` lifts the process's soft descriptor limit to its hard one at
start-up, and the default connection limit stays below it, so that accept() never fails
for lack of descriptors (Redis connections and files need some too).
"""

from __future__ import annotations

import asyncio
import logging
import resource
from typing import Any

from aiohttp import StreamReader, web
from aiohttp.web_protocol import RequestHandler

log = logging.getLogger("interlock.server")

RESERVED_DESCRIPTORS = 256  # for Redis connections, blueprint files, logs, the listener


def raise_descriptor_limit() -> int:
    """Lift the soft RLIMIT_NOFILE to the hard limit; returns the soft limit now."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        wanted = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
            soft = wanted
        except (ValueError, OSError):
            pass  # some systems refuse: keep what we have
    return soft


def default_max_connections() -> int:
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return 100_000
    return max(16, soft - RESERVED_DESCRIPTORS)


class ConnectionGuard:
    """Counts connections and arms a header deadline on each (see the module docstring)."""

    def __init__(self, max_connections: int, header_timeout_s: float) -> None:
        self.max_connections = max_connections
        self.header_timeout_s = header_timeout_s
        self.open = 0
        self.refused = 0
        self.timed_out = 0

    def handler(self, server: web.Server) -> GuardedHandler:
        """A request handler for one new connection of `server` (as `server()` makes)."""
        # web.Server.__call__ does exactly this with the RequestHandler class itself.
        return GuardedHandler(self, server, loop=server._loop, **server._kwargs)


class GuardedHandler(RequestHandler):
    """aiohttp's RequestHandler, counted and with a deadline for each request's headers."""

    __slots__ = ("_admitted", "_body", "_deadline", "_guard", "_header_timer")

    def __init__(self, guard: ConnectionGuard, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._guard = guard
        self._admitted = False
        # When the headers being waited for must be complete (None: none are awaited), and
        # the timer that checks it. A request's headers only set and clear the deadline: the
        # timer, armed at most once per deadline passed, finds a later one and waits on.
        self._deadline: float | None = None
        self._header_timer: asyncio.TimerHandle | None = None
        # The body of the last request whose headers were parsed (None before the first):
        # bytes that arrive once it is complete begin the next request's headers.
        self._body: StreamReader | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        guard = self._guard
        if guard.open >= guard.max_connections:
            guard.refused += 1
            assert isinstance(transport, asyncio.Transport)
            transport.abort()  # connection_lost follows; aiohttp never saw this one
            return
        guard.open += 1
        self._admitted = True
        self._arm(transport)
        super().connection_made(transport)

    def _arm(self, transport: asyncio.BaseTransport) -> None:
        loop = asyncio.get_running_loop()
        self._deadline = loop.time() + self._guard.header_timeout_s
        if self._header_timer is None:
            self._header_timer = loop.call_at(self._deadline, self._check, transport)

    def _check(self, transport: asyncio.BaseTransport) -> None:
        deadline = self._deadline
        loop = asyncio.get_running_loop()
        if deadline is not None and loop.time() < deadline:  # a later request's headers
            self._header_timer = loop.call_at(deadline, self._check, transport)
            return
        self._header_timer = None
        if deadline is None:  # they came in time
            return
        self._deadline = None
        self._guard.timed_out += 1
        transport.close()

    def data_received(self, data: bytes) -> None:
        if self._upgraded or self._payload_parser is not None:  # no longer HTTP requests
            super().data_received(data)
            return
        between = self._body is None or self._body.is_eof()
        if data and between and self._deadline is None and self.transport is not None:
            self._arm(self.transport)  # the first byte of a later request's headers
        parsed = self._request_count
        super().data_received(data)
        if self._request_count != parsed:  # headers complete: aiohttp queued the request
            self._body = self._messages[-1][1] if self._messages else None
            self._deadline = None  # (the timer, if still set, finds none and stops)

    def connection_lost(self, exc: BaseException | None) -> None:
        if not self._admitted:
            return
        self._admitted = False
        self._guard.open -= 1
        self._deadline = None
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None
        super().connection_lost(exc)


class GuardedSite(web.TCPSite):
    """aiohttp's TCPSite whose connections go through a ConnectionGuard."""

    def __init__(self, runner: web.AppRunner, host: str, port: int, guard: ConnectionGuard):
        super().__init__(runner, host, port)
        self.guard = guard

    async def start(self) -> None:
        await web.BaseSite.start(self)  # registers the site with its runner
        server = self._runner.server
        assert server is not None
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: self.guard.handler(server),
            self._host,
            self._port,
            backlog=self._backlog,
            reuse_address=self._reuse_address,
        )
