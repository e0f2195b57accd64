"""OpenTelemetry traces of jobs, optional: one trace per job, spans per state and attempt.

Active when `opentelemetry-sdk` is installed and `OTEL_TRACES_EXPORTER` names an exporter
(`console`, or `otlp` with `opentelemetry-exporter-otlp` installed, configured by the
standard `OTEL_EXPORTER_OTLP_*` variables); `OTEL_SERVICE_NAME` names the service.

A job outlives any one request and may move through several orchestrators, so its spans
are written when each part ends, with the times recorded in the job, and with ids derived
from the job: the trace id is the job id (a uuid4, 128 bits), the job's span id, each
state's and each task attempt's are hashes of the job id and what they stand for. Any
orchestrator therefore writes spans that join the same trace with the right parents:

    job <blueprint>            (written when the job ends)
    ├── state <name>           (written when the job leaves the state)
    └── task <type> #<attempt> (written on its result or timeout)
        └── the worker's span  (worker_sdk continues `traceparent` from the task)

The task payload's `tracing_context` carries the W3C `traceparent` of the attempt's span;
workers that do not know it (avtomatika-worker) ignore it.
"""

from __future__ import annotations

import hashlib
import os
from contextvars import ContextVar
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.id_generator import IdGenerator, RandomIdGenerator
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

from engine.runtime.jobdoc import Effects
from engine.runtime.observe import state_spans_of

_next_ids: ContextVar[tuple[int, int] | None] = ContextVar("interlock_span_ids", default=None)
_ENDED = ("job_finished", "job_failed", "job_cancelled")


class JobIdGenerator(IdGenerator):
    """Hands out the ids a job's span must have (see the module doc), else random ones."""

    def __init__(self) -> None:
        self.random = RandomIdGenerator()

    def generate_span_id(self) -> int:
        ids = _next_ids.get()
        return ids[1] if ids else self.random.generate_span_id()

    def generate_trace_id(self) -> int:
        ids = _next_ids.get()
        return ids[0] if ids else self.random.generate_trace_id()


def trace_id_of(job_id: str) -> int:
    try:
        value = int(job_id, 16)
    except ValueError:
        value = 0
    if not 0 < value < 1 << 128:  # a child job id, or anything not a uuid4 hex
        value = int.from_bytes(hashlib.sha256(job_id.encode()).digest()[:16], "big") or 1
    return value


def span_id_of(job_id: str, part: str) -> int:
    digest = hashlib.sha256(f"{job_id}/{part}".encode()).digest()
    return int.from_bytes(digest[:8], "big") or 1


def traceparent(job_id: str, task_id: str) -> str:
    return f"00-{trace_id_of(job_id):032x}-{span_id_of(job_id, task_id):016x}-01"


def provider_from_env(environ: dict[str, str] | None = None) -> TracerProvider | None:
    """A TracerProvider exporting as OTEL_TRACES_EXPORTER says, or None when unset/none."""
    env = os.environ if environ is None else environ
    name = env.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if name in ("", "none"):
        return None
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter

    exporter: SpanExporter
    if name == "console":
        exporter = ConsoleSpanExporter()
    elif name == "otlp":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
            OTLPSpanExporter,
        )

        exporter = OTLPSpanExporter()
    else:
        raise ValueError(f"OTEL_TRACES_EXPORTER={name!r} is not supported; use console or otlp")
    service = env.get("OTEL_SERVICE_NAME", "interlock")
    provider = TracerProvider(
        resource=Resource.create({"service.name": service}), id_generator=JobIdGenerator()
    )
    provider.add_span_processor(BatchSpanProcessor(exporter))
    return provider


class TracingObserver:
    """Writes a job's spans from the engine's commit hooks (engine/runtime/observe.py). It
    must run before any observer that records state entry times (observe.state_spans)."""

    def __init__(self, provider: TracerProvider) -> None:
        self.tracer = provider.get_tracer("interlock")

    def before_commit(self, machine: Any, doc: dict[str, Any], fx: Effects) -> Any:
        for e in fx.enqueue:
            e.payload["tracing_context"] = {"traceparent": traceparent(doc["id"], e.task_id)}
        return state_spans_of(doc, fx)[0]

    def _span(
        self,
        job_id: str,
        part: str,
        name: str,
        start_ms: int,
        end_ms: int,
        attributes: dict[str, Any],
        parent: str | None = "job",
    ) -> None:
        trace_id = trace_id_of(job_id)
        context = None
        if parent is not None:
            above = SpanContext(
                trace_id, span_id_of(job_id, parent), True, TraceFlags(TraceFlags.SAMPLED)
            )
            context = trace.set_span_in_context(NonRecordingSpan(above))
        token = _next_ids.set((trace_id, span_id_of(job_id, part)))
        try:
            span = self.tracer.start_span(
                name, context=context, start_time=start_ms * 1_000_000, attributes=attributes
            )
        finally:
            _next_ids.reset(token)
        span.end(end_time=max(start_ms, end_ms) * 1_000_000)

    def committed(self, machine: Any, doc: dict[str, Any], fx: Effects, note: Any) -> None:
        job_id, blueprint = doc["id"], doc["blueprint"]
        base = {"interlock.job_id": job_id, "interlock.blueprint": blueprint}
        for state, entered, left in note:
            attributes = {**base, "interlock.state": state}
            self._span(
                job_id, f"state:{state}:{entered}", f"state {state}", entered, left, attributes
            )
        picked: dict[str, int] = {}
        for event in fx.history:
            kind = event["event"]
            if kind == "task_picked_up":
                picked[event["task_id"]] = int(event["at"])
            elif kind in ("task_result", "task_timeout"):
                task_id = event["task_id"]
                end = int(event["at"])
                start = picked.get(task_id, end - int(event.get("duration_ms") or 0))
                outcome = event.get("status") or f"timeout:{event.get('timeout')}"
                attributes = {
                    **base,
                    "interlock.state": event["state"],
                    "interlock.task_id": task_id,
                    "interlock.attempt": int(event.get("attempt") or 1),
                    "interlock.outcome": str(outcome),
                }
                if event.get("worker"):
                    attributes["interlock.worker_id"] = event["worker"]
                name = f"task {event['state']} #{event.get('attempt') or 1}"
                self._span(job_id, task_id, name, start, end, attributes)
            elif kind in _ENDED:
                attributes = {**base, "interlock.status": kind.removeprefix("job_")}
                self._span(
                    job_id, "job", f"job {blueprint}", doc["created_at"], int(event["at"]),
                    attributes, parent=None,
                )  # fmt: skip
