"""A lease whose poll answer never reaches the worker: the orchestrator committed it, then
the answer was lost (its process killed before sending it, or, here, a proxy that drops it).
The worker's heartbeats do not list the task, so it is queued again within a few heartbeat
intervals at the default HEARTBEAT_TIMEOUT (60 s), not after two lease periods (minutes),
and it still runs exactly once."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from tests.support.redis_server import free_port
from tests.worker_sdk.support import (
    client,
    eventually,
    fast_env,
    history,
    orchestrator,
    records,
    submit,
    wait_terminal,
    worker_process,
)

pytestmark = pytest.mark.timeout(120)


class DroppingProxy:
    """Forwards HTTP to `upstream`, except that it drops the connection of the first poll
    whose answer holds a task: the orchestrator has leased it, the worker never sees it."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.dropped: list[str] = []
        self.empty_polls = 0  # polls answered "no task" (204)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        headers = {k: v for k, v in request.headers.items() if k.lower() != "host"}
        async with (
            aiohttp.ClientSession() as session,
            session.request(
                request.method, self.upstream + request.path_qs, headers=headers, data=body
            ) as upstream,
        ):
            answer = await upstream.read()
            polled = request.path.endswith("/tasks/next") and upstream.status == 200
            self.empty_polls += request.path.endswith("/tasks/next") and upstream.status == 204
            if polled and not self.dropped:
                self.dropped.append(json.loads(answer)["tasks"][0]["task_id"])
                assert request.transport is not None
                request.transport.abort()  # the answer is lost on its way
                return web.Response()
            kept = ("Content-Type",)
            return web.Response(
                status=upstream.status,
                body=answer,
                headers={k: v for k, v in upstream.headers.items() if k in kept},
            )


@contextlib.asynccontextmanager
async def dropping_proxy(upstream: str) -> AsyncIterator[tuple[str, DroppingProxy]]:
    proxy = DroppingProxy(upstream)
    app = web.Application()
    app.router.add_route("*", "/{path:.*}", proxy.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield f"http://127.0.0.1:{port}", proxy
    finally:
        await runner.cleanup()


async def test_a_lease_whose_poll_answer_was_lost_is_queued_again_within_seconds(
    tmp_path: Path, redis_url: str
) -> None:
    record = tmp_path / "record.txt"
    # Given two orchestrators on one Redis at the shipped HEARTBEAT_TIMEOUT (60 s), the
    # first behind a proxy that loses the answer of the first poll that brings a task
    with (
        orchestrator(tmp_path, redis_url) as first,
        orchestrator(tmp_path, redis_url) as second,
    ):
        async with dropping_proxy(first.url) as (proxy_url, proxy):
            # and a worker with the SDK's default 5 s heartbeat interval, polling the first
            urls = [{"url": proxy_url}, {"url": second.url}]
            env = fast_env(
                ORCHESTRATORS_CONFIG=json.dumps(urls),
                WORKER_HEARTBEAT_INTERVAL="5",
                APP_RECORD=str(record),
            )
            with worker_process(tmp_path, "unlucky", env):
                # (waiting without blocking this loop, which runs the proxy) until a whole
                # poll went through the proxy: any poll the worker had open on the second
                # orchestrator before it could reach the first has ended by then
                await eventually(lambda: proxy.empty_polls, 30, "a poll through the proxy")
                async with client(second) as http:
                    # when a job's task is leased to that poll and its answer is lost
                    submitted = time.monotonic()
                    job_id = await submit(http, "jobs/sdk_echo", {"n": 1})
                    await eventually(lambda: proxy.dropped, what="a poll answer dropped")
                    # then the job finishes within a few heartbeat intervals (two lease
                    # periods of the default timeout would be 120 s)
                    done = await wait_terminal(http, job_id, within_s=40)
                    took = time.monotonic() - submitted
                    events = await history(http, job_id)
    assert done["status"] == "finished", events
    assert took < 40
    [lost] = proxy.dropped
    released = [e for e in events if e["event"] == "task_released"]
    assert [(e["task_id"], e["reason"], e["attempt"]) for e in released] == [
        (lost, "unreceived", 1)
    ]
    assert not [e for e in events if e["event"] == "task_timeout"]
    # and the task ran once: the lost lease never started on the worker
    started = [r[1] for r in records(record) if r[0] == "start"]
    assert len(started) == 1
    assert started[0] != lost
