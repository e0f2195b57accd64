"""Item 5: slow clients cannot hold connections for ever, nor all of them."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web

from engine.runtime.orchestrator import Orchestrator
from server.app import build_app_around
from server.limits import ConnectionGuard, GuardedSite
from tests.server.conftest import make_settings

Address = tuple[str, int]


@pytest.fixture
async def guarded(
    orchestrator: Orchestrator, tmp_path: Path
) -> AsyncIterator[tuple[Address, ConnectionGuard]]:
    """The app on a real socket, as `interlock serve` runs it, with small limits."""
    settings = make_settings(tmp_path, BODY_TIMEOUT="300ms")
    runner = web.AppRunner(build_app_around(orchestrator, settings))
    await runner.setup()
    guard = ConnectionGuard(max_connections=5, header_timeout_s=1.0)
    site = GuardedSite(runner, "127.0.0.1", 0, guard)
    await site.start()
    host, port = runner.addresses[0][:2]
    try:
        yield (host, port), guard
    finally:
        await runner.cleanup()


async def closed(reader: asyncio.StreamReader) -> bytes:
    """Everything the server sends until it closes the connection (a 10 s deadline)."""
    async with asyncio.timeout(10):
        return await reader.read()


async def test_headers_that_never_end_are_cut_off(
    guarded: tuple[Address, ConnectionGuard],
) -> None:
    (host, port), guard = guarded
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(b"GET /_public/status HTTP/1.1\r\nHost: x\r\nX-Slow: ")  # and never more
    await writer.drain()
    assert await closed(reader) == b""
    assert guard.timed_out == 1
    writer.close()


async def test_connections_beyond_the_limit_are_closed_at_once_and_freed_later(
    guarded: tuple[Address, ConnectionGuard],
) -> None:
    (host, port), guard = guarded
    # Given the limit of 5 reached by silent connections
    # (accepted in order, well within their 1 s to send headers)
    silent = [await asyncio.open_connection(host, port) for _ in range(5)]
    # A sixth is closed as soon as it is accepted
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(b"GET /_public/status HTTP/1.1\r\nHost: x\r\n\r\n")
    assert await closed(reader) == b""
    assert guard.refused >= 1
    writer.close()
    # And once the silent ones time out, requests are served again
    for silent_reader, _ in silent:
        assert await closed(silent_reader) == b""
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(b"GET /_public/status HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert (await closed(reader)).startswith(b"HTTP/1.1 200")
    writer.close()
    for _, silent_writer in silent:
        silent_writer.close()


async def test_a_body_that_does_not_arrive_gets_a_408(
    guarded: tuple[Address, ConnectionGuard],
) -> None:
    (host, port), _ = guarded
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(
        b"POST /api/v1/jobs/image_pipeline HTTP/1.1\r\nHost: x\r\n"
        b"X-Client-Token: acme-token\r\nContent-Type: application/json\r\n"
        b"Content-Length: 1000000\r\n\r\n" + b"{" * 1000
    )
    await writer.drain()
    async with asyncio.timeout(10):
        head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408"), head
    assert b"Connection: close" in head
    writer.close()
