"""OpenTelemetry: one job is one trace, across the orchestrator and a real worker process
(the worker exports with the SDK's console exporter, the orchestrator in memory)."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from engine.runtime.orchestrator import Orchestrator
from server.app import build_app_around
from server.config import Settings
from server.tracing import JobIdGenerator, provider_from_env, span_id_of, trace_id_of
from tests.server.conftest import serve
from tests.server.helpers import WORKER_TOKEN, Client, job, submit
from tests.worker_sdk.support import fast_env, worker_process

SKILLS = "fetch_image,resize_image,publish_image"


@pytest.fixture
async def traced(
    orchestrator: Orchestrator, settings: Settings
) -> AsyncIterator[tuple[Client, InMemorySpanExporter]]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider(id_generator=JobIdGenerator())
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    api = await serve(build_app_around(orchestrator, settings, tracing=provider))
    try:
        yield api, exporter
    finally:
        await api.close()
        provider.shutdown()


def console_spans(output: str) -> list[dict[str, Any]]:
    """The spans a ConsoleSpanExporter printed (indented JSON objects) among log lines."""
    blocks = re.findall(r"^\{\n.*?^\}$", output, re.DOTALL | re.MULTILINE)
    return [json.loads(block) for block in blocks]


async def test_a_job_is_one_trace_from_orchestrator_to_worker(
    traced: tuple[Client, InMemorySpanExporter], tmp_path: Path
) -> None:
    api, exporter = traced
    url = f"http://127.0.0.1:{api.server.port}"
    env = fast_env(
        ORCHESTRATOR_URL=url,
        WORKER_TOKEN=WORKER_TOKEN,
        APP_SKILLS=SKILLS,
        OTEL_TRACES_EXPORTER="console",
    )
    # Given a real worker process serving the pipeline's three task types
    with worker_process(tmp_path, "traced-1", env) as worker:
        # When a job runs through it
        job_id = await submit(api, "jobs/image_pipeline", {"url": "https://x/cat.png"})
        assert (await job(api, job_id, wait=30))["status"] == "finished"
        output = worker.output()

    # Then the orchestrator's spans form one trace under the job's span
    trace_id = trace_id_of(job_id)
    spans = exporter.get_finished_spans()
    assert {span.context.trace_id for span in spans} == {trace_id}
    [root] = [span for span in spans if span.parent is None]
    assert root.name == "job image_pipeline"
    assert root.context.span_id == span_id_of(job_id, "job")
    children = [span for span in spans if span is not root]
    assert all(span.parent.span_id == root.context.span_id for span in children)  # type: ignore[union-attr]
    names = sorted(span.name for span in children)
    states = ["state fetch", "state resize", "state publish", "state done"]
    assert names == sorted([*states, "task fetch #1", "task resize #1", "task publish #1"])
    tasks = {
        str((span.attributes or {})["interlock.task_id"]): span
        for span in children
        if span.name.startswith("task")
    }

    # And the worker's handler spans continue it, each under its task attempt's span
    handled = [s for s in console_spans(output) if s["name"].startswith("handle ")]
    assert sorted(s["name"] for s in handled) == [
        "handle fetch_image", "handle publish_image", "handle resize_image",
    ]  # fmt: skip
    for span in handled:
        assert span["context"]["trace_id"] == f"0x{trace_id:032x}"
        task_id = span["attributes"]["interlock.task_id"]
        assert span["parent_id"] == f"0x{tasks[task_id].context.span_id:016x}"


@pytest.mark.parametrize("name", ["jaeger", "zipkin", "otlp_grpc"])
def test_an_exporter_other_than_console_or_otlp_is_refused_by_name(name: str) -> None:
    with pytest.raises(ValueError, match=f"OTEL_TRACES_EXPORTER='{name}' is not supported"):
        provider_from_env({"OTEL_TRACES_EXPORTER": name})


def test_otlp_gives_the_http_protobuf_exporter() -> None:
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    provider = provider_from_env({"OTEL_TRACES_EXPORTER": "otlp"})
    assert provider is not None
    try:
        [processor] = provider._active_span_processor._span_processors
        assert isinstance(processor.span_exporter, OTLPSpanExporter)  # type: ignore[attr-defined]
    finally:
        provider.shutdown()
