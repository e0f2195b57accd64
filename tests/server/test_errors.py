"""Every failure is JSON: routing errors, oversized bodies, crashes, and a store that is down."""

from __future__ import annotations

import io
import logging
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from aiohttp import web

from engine.blueprint.loader import load_blueprints
from engine.runtime.orchestrator import Orchestrator
from engine.runtime.registry import Registry
from engine.store.client import Store, StoreUnavailable
from engine.store.keys import Keys
from server.app import build_app_around, orchestrator_settings, runtime_settings
from server.config import Settings
from server.errors import Conflict, error_middleware
from tests.server.conftest import make_settings, serve
from tests.server.helpers import ACME, BLUEPRINTS, Client, error_of, ok_json, worker


async def test_unknown_route(api: Client) -> None:
    error = await error_of(await api.get("/nowhere"), 404)
    assert error == {"code": "not_found", "message": "no route for GET /nowhere", "details": None}


async def test_wrong_method(api: Client) -> None:
    response = await api.delete("/api/v1/blueprints", headers=ACME)
    error = await error_of(response, 405)
    assert error["code"] == "method_not_allowed"
    assert "GET" in error["details"]["allowed"]
    assert "GET" in response.headers["Allow"]


async def test_oversized_body(orchestrator: Orchestrator, tmp_path: Path) -> None:
    small = make_settings(tmp_path, MAX_BODY_BYTES="2048")
    client = await serve(build_app_around(orchestrator, small))
    try:
        body = b'{"initial_data": {"url": "' + b"x" * 4096 + b'"}}'
        for path, headers in [
            ("/api/v1/jobs/image_pipeline", ACME),
            ("/_worker/tasks/result", worker()),
        ]:
            json_headers = {**headers, "Content-Type": "application/json"}
            response = await client.post(path, data=body, headers=json_headers)
            error = await error_of(response, 413)
            assert error["code"] == "payload_too_large"
            assert error["details"] == {"max_bytes": 2048}
            assert "MAX_BODY_BYTES" in error["message"]
    finally:
        await client.close()


async def test_the_default_body_limit_is_one_mebibyte(api: Client) -> None:
    body = b'{"initial_data": {"url": "' + b"x" * (1 << 20) + b'"}}'
    headers = {**ACME, "Content-Type": "application/json"}
    response = await api.post("/api/v1/jobs/image_pipeline", data=io.BytesIO(body), headers=headers)
    assert (await error_of(response, 413))["details"] == {"max_bytes": 1 << 20}


async def crash(request: web.Request) -> web.Response:
    raise RuntimeError("secret internal detail")


async def conflict(request: web.Request) -> web.Response:
    raise Conflict("no way", code="custom", details=[1])


async def store_down(request: web.Request) -> web.Response:
    raise StoreUnavailable("connection refused at redis://:pw@host")


async def test_unexpected_errors_are_a_generic_logged_500(
    caplog: pytest.LogCaptureFixture,
) -> None:
    app = web.Application(middlewares=[error_middleware])
    app.router.add_get("/crash", crash)
    app.router.add_get("/conflict", conflict)
    app.router.add_get("/down", store_down)
    client = await serve(app)
    try:
        caplog.set_level(logging.ERROR, logger="interlock.server")
        error = await error_of(await client.get("/crash"), 500)
        assert error["code"] == "internal_error"
        assert "secret" not in error["message"]
        assert error["details"] is None
        assert "RuntimeError: secret internal detail" in caplog.text  # the traceback is logged
        error = await error_of(await client.get("/conflict"), 409)
        assert error == {"code": "custom", "message": "no way", "details": [1]}
        error = await error_of(await client.get("/down"), 503)
        assert error["code"] == "store_unavailable"
        assert "pw" not in error["message"]
    finally:
        await client.close()


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port  # nothing listens here once the socket is closed


@pytest.fixture
async def dead_store_api(settings: Settings) -> AsyncIterator[Client]:
    url = f"redis://127.0.0.1:{closed_port()}/0"
    redis = aioredis.Redis.from_url(url, decode_responses=True, socket_connect_timeout=1)
    store = Store(redis, Keys(), url)
    registry = Registry(load_blueprints([BLUEPRINTS]), runtime_settings(settings))
    orchestrator = Orchestrator(store, registry, orchestrator_settings(settings))  # not started
    client = await serve(build_app_around(orchestrator, settings))
    try:
        yield client
    finally:
        await client.close()
        await store.close()


async def test_a_store_that_is_down_answers_503(dead_store_api: Client) -> None:
    api = dead_store_api
    status = await error_of(await api.get("/_public/status"), 503)
    assert status["code"] == "store_unavailable"
    for method, path, headers, body in [
        ("GET", "/api/v1/jobs/" + "f" * 32, ACME, None),
        ("POST", "/api/v1/jobs/image_pipeline", ACME, {"initial_data": {"url": "x"}}),
        ("PATCH", "/_worker/workers/w-solo", worker(), {}),
        ("GET", "/_worker/workers/w-solo/tasks/next?timeout=0", worker(), None),
    ]:
        response = await api.request(method, path, headers=headers, json=body)
        error = await error_of(response, 503)
        assert error["code"] == "store_unavailable", (method, path)


async def test_public_status(api: Client) -> None:
    assert await ok_json(await api.get("/_public/status")) == {"status": "ok", "store": "reachable"}
