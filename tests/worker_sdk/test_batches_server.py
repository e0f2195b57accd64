"""The SDK's batches against a real Interlock server (in process, on the embedded store),
with the server counting the worker's requests."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from engine.blueprint.loader import load_blueprints
from engine.runtime.orchestrator import Orchestrator
from engine.runtime.registry import Registry
from engine.store.client import Store
from server.app import build_app_around, orchestrator_settings, runtime_settings
from server.errors import Handler
from tests.server.conftest import make_settings
from tests.server.helpers import ACME, WORKER_TOKEN
from tests.worker_sdk.support import BLUEPRINTS, eventually, fast_config, running
from worker_sdk import OrchestratorConfig, TaskContext, Worker

pytestmark = pytest.mark.timeout(60)

Client = TestClient[web.Request, web.Application]


class Counted:
    """An Interlock server that counts requests by route, and its client for the client API."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.requests: Counter[str] = Counter()
        self.max_tasks: list[str] = []
        self.results_per_request: list[int] = []

    @web.middleware
    async def count(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path.endswith("/tasks/next"):
            self.max_tasks.append(request.query.get("max_tasks", ""))
        if request.path == "/_worker/tasks/results":
            self.results_per_request.append(len((await request.json())["results"]))
        self.requests[f"{request.method} {request.path.rsplit('/', 1)[-1]}"] += 1
        return await handler(request)

    @property
    def url(self) -> str:
        return str(self.client.make_url("")).rstrip("/")


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[Counted]:
    settings = make_settings(tmp_path, BLUEPRINTS_DIR=str(BLUEPRINTS))
    store = await Store.connect("memory://", partitions=settings.redis_partitions)
    registry = Registry(load_blueprints([BLUEPRINTS]), runtime_settings(settings))
    orchestrator = Orchestrator(store, registry, orchestrator_settings(settings))
    await orchestrator.start()
    app = build_app_around(orchestrator, settings)
    client: Client = TestClient(TestServer(app))
    counted = Counted(client)
    app.middlewares.insert(0, counted.count)
    await client.start_server()
    try:
        yield counted
    finally:
        await client.close()
        await orchestrator.stop()
        await store.close()


async def test_a_busy_worker_sends_several_results_per_request(
    tmp_path: Path, server: Counted
) -> None:
    # Given 8 queued jobs and a worker with 8 slots whose handlers all finish together
    jobs = []
    for n in range(8):
        response = await server.client.post(
            "/api/v1/jobs/sdk_echo", json={"initial_data": {"n": n}}, headers=ACME
        )
        assert response.status == 202, await response.text()
        jobs.append((await response.json())["job_id"])
    config = fast_config(
        tmp_path,
        orchestrators=(OrchestratorConfig(server.url, WORKER_TOKEN),),
        max_concurrent_tasks=8,
    )
    worker = Worker(config)
    started: list[str] = []
    gate = asyncio.Event()

    @worker.task("echo")
    async def echo(params: dict[str, Any], ctx: TaskContext) -> dict[str, Any]:
        started.append(ctx.task_id)
        await gate.wait()
        return {"n": params["n"]}

    async with running(worker):
        # When the worker has taken every task and they all finish at once
        await eventually(lambda: len(started) == 8, what="8 tasks started")
        gate.set()
        # Then every job finishes with its own output
        for n, job_id in enumerate(jobs):
            response = await server.client.get(
                f"/api/v1/jobs/{job_id}", params={"wait": "10"}, headers=ACME
            )
            view = await response.json()
            assert view["status"] == "finished", view
            assert view["result"] == {"n": n}
        await eventually(lambda: not worker.task_ids, what="nothing pending")

    # And the polls asked for batches: the first for all 8 slots, none for more than is free
    assert server.max_tasks[0] == "8"
    assert all(1 <= int(n) <= 8 for n in server.max_tasks)
    # And the 8 results went in fewer requests than results, through the batch route only
    assert sum(server.results_per_request) == 8
    assert len(server.results_per_request) < 8
    assert server.requests["POST result"] == 0
