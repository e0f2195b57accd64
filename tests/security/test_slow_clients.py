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


def post(endpoint: str, body: bytes, length: int | None = None) -> bytes:
    """A job submission as raw bytes; `length` may claim more body than `body` holds."""
    head = (
        f"POST /api/v1/jobs/{endpoint} HTTP/1.1\r\nHost: x\r\nX-Client-Token: acme-token\r\n"
        f"Content-Type: application/json\r\nContent-Length: {length or len(body)}\r\n\r\n"
    )
    return head.encode() + body


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
    writer.write(post("image_pipeline", b"{" * 1000, length=1_000_000))
    await writer.drain()
    async with asyncio.timeout(10):
        head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408"), head
    assert b"Connection: close" in head
    writer.close()


async def response_head(reader: asyncio.StreamReader) -> bytes:
    async with asyncio.timeout(10):
        head = await reader.readuntil(b"\r\n\r\n")
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    await reader.readexactly(length)
    return head


STATUS = b"GET /_public/status HTTP/1.1\r\nHost: x\r\n\r\n"


async def dribbled_until_closed(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> float:
    """Send a request whose headers come a byte every 100 ms (they would take 4 s); the
    seconds from its first byte until the server closed the connection, without answering."""
    loop = asyncio.get_running_loop()
    started = loop.time()

    async def dribble() -> None:
        for byte in b"GET /_public/status HTTP/1.1\r\nHost: x\r\nX-Slow: y\r\n\r\n":
            writer.write(bytes([byte]))
            await writer.drain()
            await asyncio.sleep(0.1)

    sender = asyncio.create_task(dribble())
    try:
        assert await closed(reader) == b""
        return loop.time() - started
    finally:
        sender.cancel()
        await asyncio.gather(sender, return_exceptions=True)
        writer.close()


async def answered_once(host: str, port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A kept-alive connection on which one good request has been answered."""
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(STATUS)
    assert (await response_head(reader)).startswith(b"HTTP/1.1 200")
    return reader, writer


async def test_a_later_request_on_a_kept_connection_has_the_same_header_deadline(
    guarded: tuple[Address, ConnectionGuard],
) -> None:
    (host, port), guard = guarded
    # Given one good request answered on a kept-alive connection
    reader, writer = await answered_once(host, port)
    # When the next request's headers dribble in, then the server closes it at the 1 s
    # deadline, without answering
    assert await dribbled_until_closed(reader, writer) < 3
    assert guard.timed_out == 1


async def test_an_idle_kept_connection_is_not_held_to_the_header_deadline(
    guarded: tuple[Address, ConnectionGuard],
) -> None:
    (host, port), guard = guarded
    reader, writer = await asyncio.open_connection(host, port)
    # A client that sends a request with a body, then is silent for longer than the deadline
    writer.write(post("reminder", b'{"initial_data": {"user": "u"}}'))
    head = await response_head(reader)
    assert b" 20" in head[:12]
    await asyncio.sleep(1.5)  # idle, not sending headers: the keep-alive timeout governs
    # still has its connection for the next request
    writer.write(STATUS)
    assert (await response_head(reader)).startswith(b"HTTP/1.1 200")
    assert guard.timed_out == 0
    writer.close()


async def test_a_later_requests_deadline_runs_from_its_own_first_byte(
    guarded: tuple[Address, ConnectionGuard],
) -> None:
    (host, port), guard = guarded
    # Given one good request answered, then 0.6 s of quiet on the kept-alive connection
    reader, writer = await answered_once(host, port)
    await asyncio.sleep(0.6)
    # When the next request's headers dribble in, then they are cut off 1 s after their
    # first byte, not 1 s after the first request's
    assert 0.9 <= await dribbled_until_closed(reader, writer) < 3
    assert guard.timed_out == 1
