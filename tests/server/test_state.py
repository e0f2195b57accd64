"""Long polls and shutdown: `unless_closing` without HTTP."""

from __future__ import annotations

import asyncio

import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from server.state import CLOSING, LONG_POLLS, release_long_polls, unless_closing


def request_for(closing: asyncio.Event) -> web.Request:
    app = web.Application()
    app[CLOSING] = closing
    app[LONG_POLLS] = set()
    return make_mocked_request("GET", "/", app=app)


async def test_work_is_not_started_once_shutdown_began() -> None:
    closing = asyncio.Event()
    closing.set()
    started = []

    async def work() -> int:
        started.append(True)
        return 1

    assert await unless_closing(request_for(closing), work(), 0) == 0
    assert started == []


async def test_shutdown_cancels_the_work_and_gives_the_fallback() -> None:
    closing = asyncio.Event()
    cancelled = asyncio.Event()

    async def work() -> int:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return 1

    request = request_for(closing)
    waiting = asyncio.create_task(unless_closing(request, work(), 0))
    await asyncio.sleep(0.01)
    release_long_polls(request.app)
    assert closing.is_set()
    async with asyncio.timeout(5):
        assert await waiting == 0
    assert cancelled.is_set()  # and it was awaited: nothing outlives the request
    assert request.app[LONG_POLLS] == set()


async def test_a_cancelled_request_is_not_taken_for_the_shutdown() -> None:
    async def work() -> int:
        await asyncio.sleep(30)
        return 1

    request = request_for(asyncio.Event())
    waiting = asyncio.create_task(unless_closing(request, work(), 0))
    await asyncio.sleep(0.01)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert request.app[LONG_POLLS] == set()


async def test_results_and_errors_of_the_work_pass_through() -> None:
    async def answer() -> int:
        return 7

    async def fail() -> int:
        raise ValueError("boom")

    assert await unless_closing(request_for(asyncio.Event()), answer(), 0) == 7
    with pytest.raises(ValueError, match="boom"):
        await unless_closing(request_for(asyncio.Event()), fail(), 0)
