"""OpenTelemetry in the worker, optional: the handler runs in a span that continues the
orchestrator's trace, read from the task's `tracing_context` (W3C `traceparent`).

Without `opentelemetry-api` installed, or without a `traceparent` in the task, the handler
runs as it is. A process that installs `opentelemetry-sdk` and sets `OTEL_TRACES_EXPORTER`
(`console`, or `otlp` with `opentelemetry-exporter-otlp`) gets an exporting provider from
`configure_from_env()`, which the Worker calls on start; a process that configures
OpenTelemetry itself keeps its own provider.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping
from typing import Any

try:
    from opentelemetry import trace
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
except ImportError:  # the API is optional
    trace = None  # type: ignore[assignment]

_configured = False


def configure_from_env(environ: Mapping[str, str] | None = None) -> None:
    """Install an exporting TracerProvider as OTEL_TRACES_EXPORTER asks (once a process)."""
    global _configured
    env = os.environ if environ is None else environ
    name = env.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if _configured or trace is None or name in ("", "none"):
        return
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter

    exporter: SpanExporter
    if name == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        exporter = ConsoleSpanExporter()
    else:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
            OTLPSpanExporter,
        )

        exporter = OTLPSpanExporter()
    service = env.get("OTEL_SERVICE_NAME", "interlock-worker")
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    _configured = True


@contextlib.contextmanager
def handler_span(task: Mapping[str, Any], worker_id: str) -> Iterator[None]:
    """A span around one task's handler, child of the orchestrator's attempt span."""
    carrier = task.get("tracing_context")
    if trace is None or not isinstance(carrier, dict) or "traceparent" not in carrier:
        yield
        return
    context = TraceContextTextMapPropagator().extract(
        {k: v for k, v in carrier.items() if isinstance(v, str)}
    )
    tracer = trace.get_tracer("worker_sdk")
    attributes = {
        "interlock.job_id": str(task.get("job_id", "")),
        "interlock.task_id": str(task.get("task_id", "")),
        "interlock.worker_id": worker_id,
    }
    with tracer.start_as_current_span(
        f"handle {task.get('type', '')}", context=context, attributes=attributes
    ):
        yield
