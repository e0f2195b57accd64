"""Long polls and shutdown: `unless_closing` without HTTP."""

from __future__ import annotations

import asyncio

import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from server.state import CLOSING, unless_closing


def request_for(closing: asyncio.Event) -> web.Request:
    app = web.Application()
    app[CLOSING] = closing
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

    waiting = asyncio.create_task(unless_closing(request_for(closing), work(), 0))
    await asyncio.sleep(0.01)
    closing.set()
    async with asyncio.timeout(5):
        assert await waiting == 0
    assert cancelled.is_set()  # and it was awaited: nothing outlives the request


async def test_results_and_errors_of_the_work_pass_through() -> None:
    async def answer() -> int:
        return 7

    async def fail() -> int:
        raise ValueError("boom")

    assert await unless_closing(request_for(asyncio.Event()), answer(), 0) == 7
    with pytest.raises(ValueError, match="boom"):
        await unless_closing(request_for(asyncio.Event()), fail(), 0)
