"""Traces exported over OTLP/HTTP (protobuf) by real processes: `interlock serve` and a
worker_sdk worker, both with `OTEL_TRACES_EXPORTER=otlp`, post to a receiver that this test
runs at `/v1/traces` and decodes with `opentelemetry-proto`."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from server.tracing import span_id_of, trace_id_of
from tests.support.processes import CLIENT_TOKEN, WORKER_TOKEN, serve
from tests.worker_sdk.support import fast_env, worker_process

pytestmark = pytest.mark.timeout(120)


@dataclass(frozen=True)
class Received:
    service: str
    name: str
    trace_id: int
    span_id: int
    parent_id: int | None
    attributes: dict[str, str]


@dataclass
class Receiver:
    """An OTLP/HTTP trace receiver: every span posted to /v1/traces, decoded."""

    url: str = ""
    spans: list[Received] = field(default_factory=list)
    content_types: set[str] = field(default_factory=set)
    arrived: asyncio.Condition = field(default_factory=asyncio.Condition)

    async def traces(self, request: web.Request) -> web.Response:
        self.content_types.add(request.content_type)
        message = ExportTraceServiceRequest.FromString(await request.read())
        for resource_spans in message.resource_spans:
            resource = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    self.spans.append(
                        Received(
                            service=resource.get("service.name", ""),
                            name=span.name,
                            trace_id=int.from_bytes(span.trace_id, "big"),
                            span_id=int.from_bytes(span.span_id, "big"),
                            parent_id=(
                                int.from_bytes(span.parent_span_id, "big")
                                if span.parent_span_id
                                else None
                            ),
                            attributes={
                                a.key: a.value.string_value or str(a.value.int_value)
                                for a in span.attributes
                            },
                        )
                    )
        async with self.arrived:
            self.arrived.notify_all()
        body = ExportTraceServiceResponse().SerializeToString()
        return web.Response(body=body, content_type="application/x-protobuf")

    async def until(self, count: int, within_s: float = 30) -> list[Received]:
        """Wait for `count` spans to have arrived (the exporters batch and flush on a timer)."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(within_s), self.arrived:
                await self.arrived.wait_for(lambda: len(self.spans) >= count)
        return list(self.spans)


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    found = Receiver()
    app = web.Application()
    app.router.add_post("/v1/traces", found.traces)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    found.url = f"http://127.0.0.1:{port}/v1/traces"
    try:
        yield found
    finally:
        await runner.cleanup()


async def test_a_job_arrives_at_an_otlp_receiver_as_one_trace(
    tmp_path: Path, redis_url: str, receiver: Receiver
) -> None:
    otlp = {
        "OTEL_TRACES_EXPORTER": "otlp",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": receiver.url,
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/protobuf",
        "OTEL_BSP_SCHEDULE_DELAY": "100",  # the server's batch processor: flush every 100 ms
    }
    # Given an orchestrator and a worker_sdk worker, both exporting over OTLP/HTTP
    with (
        serve(tmp_path, redis_url, env={**otlp, "OTEL_SERVICE_NAME": "orchestrator-a"}) as server,
        worker_process(
            tmp_path,
            "otlp-1",
            fast_env(
                ORCHESTRATOR_URL=server.url,
                WORKER_TOKEN=WORKER_TOKEN,
                APP_SKILLS="fetch_image,resize_image,publish_image",
                OTEL_SERVICE_NAME="worker-a",
                **otlp,
            ),
        ),
    ):
        # When a job of three tasks runs to its end
        headers = {"X-Client-Token": CLIENT_TOKEN}
        async with aiohttp.ClientSession(server.url, headers=headers) as http:
            body = {"initial_data": {"url": "https://example.test/cat.png"}}
            async with http.post("/api/v1/jobs/image_pipeline", json=body) as resp:
                assert resp.status == 202
                job_id = (await resp.json())["job_id"]
            async with http.get(f"/api/v1/jobs/{job_id}", params={"wait": "30"}) as resp:
                assert (await resp.json())["status"] == "finished"
        # 1 job + 4 states + 3 task attempts from the orchestrator, 3 handlers from the worker
        spans = await receiver.until(11)

    # Then the receiver got protobuf posts holding one trace, the job's
    assert receiver.content_types == {"application/x-protobuf"}
    assert len(spans) == 11, [s.name for s in spans]
    trace_id = trace_id_of(job_id)
    assert {s.trace_id for s in spans} == {trace_id}
    ours = [s for s in spans if s.service == "orchestrator-a"]
    theirs = [s for s in spans if s.service == "worker-a"]
    [root] = [s for s in ours if s.parent_id is None]
    assert root.name == "job image_pipeline"
    assert root.span_id == span_id_of(job_id, "job")
    assert root.attributes["interlock.status"] == "finished"
    children = [s for s in ours if s is not root]
    assert {s.parent_id for s in children} == {root.span_id}
    states = ["state fetch", "state resize", "state publish", "state done"]
    assert sorted(s.name for s in children) == sorted(
        [*states, "task fetch #1", "task resize #1", "task publish #1"]
    )
    tasks = {s.attributes["interlock.task_id"]: s for s in children if s.name.startswith("task")}
    assert all(s.span_id == span_id_of(job_id, task_id) for task_id, s in tasks.items())

    # And each worker span hangs under its task attempt's span
    assert sorted(s.name for s in theirs) == [
        "handle fetch_image", "handle publish_image", "handle resize_image",
    ]  # fmt: skip
    for span in theirs:
        assert span.parent_id == tasks[span.attributes["interlock.task_id"]].span_id
