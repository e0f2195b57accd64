"""What the worker sends, seen by a scripted orchestrator that records every request."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from tests.support.redis_server import free_port
from tests.worker_sdk.support import eventually, fast_config, running
from worker_sdk import OrchestratorConfig, TaskContext, Worker


class Recorder:
    def __init__(self) -> None:
        self.requests: list[tuple[str, str, dict[str, str], Any]] = []

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.json() if request.can_read_body else None
        self.requests.append((request.method, request.path_qs, dict(request.headers), body))
        if request.path.endswith("/tasks/next"):
            return web.Response(status=204)
        return web.json_response({"status": "ok"})

    def calls(self, method: str, fragment: str) -> list[tuple[str, dict[str, str], Any]]:
        return [(p, h, b) for m, p, h, b in self.requests if m == method and fragment in p]


@pytest.fixture
async def recorder() -> AsyncIterator[tuple[Recorder, str]]:
    recording = Recorder()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", recording.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    yield recording, f"http://127.0.0.1:{port}"
    await runner.cleanup()


async def test_registration_heartbeat_and_poll_on_the_wire(
    tmp_path: Path, recorder: tuple[Recorder, str]
) -> None:
    recording, url = recorder
    config = fast_config(
        tmp_path,
        worker_id="gpu-7",
        worker_type="resizer",
        max_concurrent_tasks=3,
        orchestrators=(OrchestratorConfig(url, "gpu-7-token"),),
    )
    worker = Worker(config)
    schema = {"type": "object", "required": ["path"]}

    @worker.task("resize_image", input_schema=schema)
    async def resize(params: dict[str, Any], ctx: TaskContext) -> dict[str, Any]:
        return {}

    @worker.task("ocr")
    def ocr(params: dict[str, Any], ctx: TaskContext) -> dict[str, Any]:
        return {}

    async with running(worker):
        await eventually(lambda: len(recording.calls("PATCH", "/_worker/workers/gpu-7")) >= 2)
        await eventually(lambda: recording.calls("GET", "/tasks/next"))

    [(_, headers, registration)] = recording.calls("POST", "/_worker/workers/register")
    assert headers["X-Worker-ID"] == "gpu-7"
    assert headers["X-Worker-Token"] == "gpu-7-token"
    assert registration["worker_id"] == "gpu-7"
    assert registration["worker_type"] == "resizer"
    assert registration["supported_skills"] == [
        {"name": "ocr", "type": "ocr"},
        {"name": "resize_image", "type": "resize_image", "input_schema": schema},
    ]
    assert registration["available_skills"] == ["ocr", "resize_image"]
    beats = [b for _, _, b in recording.calls("PATCH", "/_worker/workers/gpu-7")]
    assert beats[0]["current_tasks"] == []
    assert beats[0]["status"] == "idle"
    assert beats[-1]["status"] == "offline"  # the goodbye at shutdown
    path, _, _ = recording.calls("GET", "/tasks/next")[0]
    # An idle worker's poll holds all 3 slots, so it asks for up to 3 tasks (protocol §11).
    assert path == (
        "/_worker/workers/gpu-7/tasks/next?timeout=1&available_skills=ocr,resize_image&max_tasks=3"
    )


async def test_a_crashed_background_loop_stops_the_worker(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A bug in the worker's own machinery is not left to run half dead: it is logged and
    the worker stops (so that `run()` exits 1 and a process manager restarts it)."""
    worker = Worker(fast_config(tmp_path, f"http://127.0.0.1:{free_port()}"))

    @worker.task("echo")
    async def echo(params: dict[str, Any], ctx: TaskContext) -> dict[str, Any]:
        return params

    def broken() -> dict[str, Any]:
        raise TypeError("a bug")

    monkeypatch.setattr(worker, "_registration", broken)
    async with running(worker):
        await eventually(lambda: worker._crashed, what="the crash being noticed")
    assert worker._stop_requested.is_set()
    assert "crashed; stopping the worker" in caplog.text
    assert "TypeError: a bug" in caplog.text
