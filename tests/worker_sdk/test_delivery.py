"""Answers as the SDK reads them, and result delivery against scripted HTTP servers."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from aiohttp import web

from tests.support.redis_server import free_port
from worker_sdk import OrchestratorConfig
from worker_sdk.connection import Connection, RateLimited, Refused, Unavailable, _answer
from worker_sdk.delivery import Delivery

Script = Callable[[dict[str, Any]], web.Response]


def test_answers_are_translated_where_they_enter() -> None:
    assert _answer("GET", "/p", 204, "", None) is None
    assert _answer("POST", "/p", 200, '{"status": "ok"}', None) == {"status": "ok"}
    for status in (500, 503, 408):
        with pytest.raises(Unavailable, match=f"HTTP {status}"):
            _answer("POST", "/p", status, '{"error": {"message": "boom"}}', None)
    with pytest.raises(Unavailable, match="non-JSON"):
        _answer("GET", "/p", 200, "<html>proxy error</html>", None)
    with pytest.raises(RateLimited) as limited:
        _answer("GET", "/p", 429, "slow down", "7")
    assert limited.value.retry_after == 7
    with pytest.raises(Refused) as refused:
        _answer("PATCH", "/p", 404, '{"error": {"message": "Worker not found; register"}}', None)
    assert refused.value.worker_unknown
    assert refused.value.message == "Worker not found; register"
    with pytest.raises(Refused) as refused:
        _answer("POST", "/p", 403, '{"error": "Unauthorized: wrong token"}', None)
    assert refused.value.unauthorized
    assert not refused.value.worker_unknown


class Scripted:
    """An orchestrator whose result endpoint answers from a script, recording each body."""

    def __init__(self, script: Script) -> None:
        self.script = script
        self.bodies: list[dict[str, Any]] = []
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"

    async def result(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.bodies.append(body)
        return self.script(body)


@pytest.fixture
async def servers() -> AsyncIterator[Callable[[Script], Any]]:
    runners: list[web.AppRunner] = []

    async def start(script: Script) -> Scripted:
        scripted = Scripted(script)
        app = web.Application()
        app.router.add_post("/_worker/tasks/result", scripted.result)
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", scripted.port).start()
        runners.append(runner)
        return scripted

    yield start
    for runner in runners:
        await runner.cleanup()


def answers(*replies: tuple[int, Any]) -> Script:
    """Answer with each reply in turn, then keep repeating the last."""
    queue = list(replies)

    def script(body: dict[str, Any]) -> web.Response:
        status, payload = queue.pop(0) if len(queue) > 1 else queue[0]
        return web.Response(
            status=status, text=json.dumps(payload), content_type="application/json"
        )

    return script


async def deliver(
    *urls: str, up: tuple[bool, ...] = (), within_s: float = 5
) -> tuple[list[Connection], bool]:
    """Deliver one result issued by the first orchestrator; whether it settled in time."""
    connections = [Connection(OrchestratorConfig(u, "t"), "w1", 2.0) for u in urls]
    for connection, is_up in zip(connections, up or (True,) * len(urls), strict=True):
        await connection.open()
        connection.up = is_up
    delivery = Delivery("w1", connections, 0.01, 0.05)
    settled = asyncio.Event()

    async def done() -> None:
        settled.set()

    body = {"job_id": "j1", "task_id": "t1", "worker_id": "w1", "status": "success", "data": {}}
    delivery.submit(connections[0], body, done)
    try:
        await asyncio.wait_for(settled.wait(), within_s)
    except TimeoutError:
        return connections, False
    finally:
        await delivery.drain(0.1)
        for connection in connections:
            await connection.close()
    return connections, True


async def test_5xx_is_retried_with_the_identical_body_until_accepted(servers: Any) -> None:
    issuer = await servers(answers((500, {}), (503, {}), (200, {"status": "accepted"})))
    _, settled = await deliver(issuer.url)
    assert settled
    assert len(issuer.bodies) == 3
    assert issuer.bodies[0] == issuer.bodies[1] == issuer.bodies[2]


@pytest.mark.parametrize(
    "reply",
    [(200, {"status": "ignored", "reason": "stale_task"}), (400, {"error": "bad"}), (403, {})],
)
async def test_ignored_and_4xx_answers_are_definitive(servers: Any, reply: Any) -> None:
    issuer = await servers(answers(reply))
    _, settled = await deliver(issuer.url)
    assert settled
    assert len(issuer.bodies) == 1


async def test_429_is_retried(servers: Any) -> None:
    issuer = await servers(answers((429, {}), (200, {"status": "accepted"})))
    _, settled = await deliver(issuer.url)
    assert settled
    assert len(issuer.bodies) == 2


async def test_an_unreachable_issuer_is_replaced_by_one_that_knows_the_job(servers: Any) -> None:
    same_store = await servers(answers((200, {"status": "accepted"})))
    dead = f"http://127.0.0.1:{free_port()}"
    connections, settled = await deliver(dead, same_store.url)
    assert settled
    assert len(same_store.bodies) == 1
    assert not connections[0].up  # the issuer is now being probed


async def test_an_orchestrator_that_does_not_know_the_job_never_settles_it(servers: Any) -> None:
    foreign = await servers(answers((200, {"status": "ignored", "reason": "job_not_found"})))
    dead = f"http://127.0.0.1:{free_port()}"
    _, settled = await deliver(dead, foreign.url, within_s=0.5)
    assert not settled  # still retrying the issuer when the test gave up
    assert len(foreign.bodies) >= 2  # asked again on each retry of the issuer


async def test_an_orchestrator_that_is_down_is_not_asked(servers: Any) -> None:
    other = await servers(answers((200, {"status": "accepted"})))
    dead = f"http://127.0.0.1:{free_port()}"
    _, settled = await deliver(dead, other.url, up=(True, False), within_s=0.5)
    assert not settled
    assert other.bodies == []
