"""`GET /metrics`: Prometheus metrics, made with prometheus-client.

Two kinds of series, so that several orchestrators behind one Redis are not double-counted:

* **Per process** (`interlock_http_*`, `interlock_jobs_*`, `interlock_state_*`,
  `interlock_task_*`, `interlock_lease_*`, `interlock_webhook_deliveries_*`,
  `interlock_store_*`): what this process did since it started. Every orchestrator counts
  only its own work, so `sum()` over the scraped instances is the deployment's total.
* **Deployment-wide** (`interlock_deployment_*`): read from Redis at scrape time, the same
  values whichever orchestrator is asked. Aggregate them with `max()` (or scrape one).

A scrape reads Redis in one pipelined round trip of `2*P*T + T + 2*P` commands (P
partitions, T task types of the loaded blueprints, at most `MAX_TASK_TYPES`), each O(1) or
O(log N): ZCARD and ZRANGE 0 0 per task queue, ZCOUNT per task type, ZCARD of the
webhook outbox and of the approval index per partition.

Label values come from the loaded blueprints (blueprint, state, task type), from fixed
sets (status, reason) or, for error codes that workers choose, from `LabelCap`: the first
`MAX_CODES` distinct codes, the rest counted as `other`. A scrape's size is bounded.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

from engine import clock
from engine.runtime.jobdoc import Effects
from engine.runtime.observe import state_spans_of
from engine.runtime.webhooks import Sender
from server.errors import Handler

if TYPE_CHECKING:
    from engine.blueprint.model import Blueprint
    from engine.runtime.machine import Machine
    from engine.runtime.orchestrator import Orchestrator

MAX_TASK_TYPES = 500  # task types a scrape reads queues for (bounds its Redis cost)
MAX_CODES = 50  # distinct error codes kept as label values; the rest are "other"
QUEUE_EPOCH_MS = 1_600_000_000_000  # see jobdoc.queue_score
PRIORITY_STEP = 1 << 41

# Seconds: a state or a task can last from milliseconds to days.
LONG_BUCKETS = (0.005, 0.025, 0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 14400, 86400)
BATCH_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500)
ENDED_EVENTS = {"job_finished": "finished", "job_failed": "failed", "job_cancelled": "cancelled"}
# History events of what clients do to running jobs -> the `control` label.
CONTROL_EVENTS = {
    "job_paused": "paused",
    "job_resumed": "resumed",
    "event_received": "event",
    "job_redriven": "redriven",
}


class LabelCap:
    """Label values that clients choose, bounded: the first `limit` distinct ones, then
    `other` (a worker inventing a new error code per task cannot grow the scrape)."""

    def __init__(self, limit: int = MAX_CODES) -> None:
        self.limit = limit
        self.seen: set[str] = set()

    def __call__(self, value: Any) -> str:
        text = str(value)[:64] if value else "none"
        if text in self.seen:
            return text
        if len(self.seen) < self.limit:
            self.seen.add(text)
            return text
        return "other"


class Metrics:
    """This process's metrics, in a registry of their own (two apps share nothing)."""

    def __init__(self) -> None:
        self.collectors = CollectorRegistry(auto_describe=True)
        r = self.collectors
        self.http_requests = Counter(
            "interlock_http_requests",
            "HTTP requests answered by this process, by route template and status",
            ["method", "route", "status"],
            registry=r,
        )
        self.http_duration = Histogram(
            "interlock_http_request_duration_seconds",
            "Time to answer an HTTP request (long polls included), by route template",
            ["method", "route"],
            registry=r,
        )
        self.jobs_created = Counter(
            "interlock_jobs_created", "Jobs this process created", ["blueprint"], registry=r
        )
        self.jobs_ended = Counter(
            "interlock_jobs_ended",
            "Jobs this process moved to a terminal status",
            ["blueprint", "status"],
            registry=r,
        )
        self.job_controls = Counter(
            "interlock_job_controls",
            "Pauses, resumes, events and redrives this process applied to jobs",
            ["blueprint", "control"],
            registry=r,
        )
        self.state_duration = Histogram(
            "interlock_state_duration_seconds",
            "Time a job spent in a state, observed by the process that moved it on",
            ["blueprint", "state"],
            buckets=LONG_BUCKETS,
            registry=r,
        )
        self.task_run = Histogram(
            "interlock_task_run_duration_seconds",
            "Time from a worker taking a task to its result, by result status",
            ["blueprint", "state", "task_type", "status"],
            buckets=LONG_BUCKETS,
            registry=r,
        )
        self.retries = Counter(
            "interlock_task_retries",
            "Task attempts scheduled again, by the error code that caused it",
            ["blueprint", "task_type", "reason"],
            registry=r,
        )
        self.timeouts = Counter(
            "interlock_task_timeouts",
            "Task timeouts, by kind: dispatch, run, heartbeat, worker_lost",
            ["blueprint", "task_type", "reason"],
            registry=r,
        )
        self.lease_expiries = Counter(
            "interlock_lease_expiries",
            "Tasks taken back from a worker: run, heartbeat, worker_lost, released",
            ["task_type", "reason"],
            registry=r,
        )
        self.webhook_deliveries = Counter(
            "interlock_webhook_deliveries",
            "Webhook POSTs answered with 2xx by the receiver",
            registry=r,
        )
        self.webhook_failures = Counter(
            "interlock_webhook_failures",
            "Webhook POSTs that failed: http (a non-2xx answer) or network",
            ["reason"],
            registry=r,
        )
        self.store_batch = Histogram(
            "interlock_store_batch_size",
            "Items per Redis round trip: job changes (commit), task queues (lease), heartbeats",
            ["operation"],
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.store_latency = Histogram(
            "interlock_store_latency_seconds",
            "Time of one batched Redis round trip, by operation",
            ["operation"],
            registry=r,
        )
        self.codes = LabelCap()
        # prometheus-client's labels() builds a key each call; the children, by label
        # values, are cached here since the same few are used on every commit.
        self._children: dict[tuple[Any, ...], Any] = {}

    def child(self, metric: Any, *values: str) -> Any:
        key = (id(metric), *values)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(*values)
        return found

    # -- hooks -------------------------------------------------------------------------------

    def store_timing(self, operation: str, items: int, seconds: float) -> None:
        self.child(self.store_batch, operation).observe(items)
        self.child(self.store_latency, operation).observe(seconds)

    def observer(self) -> MetricsObserver:
        return MetricsObserver(self)

    def counting_sender(self, sender: Sender) -> Sender:
        """`sender`, counting its deliveries and failures."""

        async def send(url: str, body: bytes, headers: Mapping[str, str]) -> int:
            try:
                status = await sender(url, body, headers)
            except OSError:
                self.child(self.webhook_failures, "network").inc()
                raise
            if 200 <= status < 300:
                self.webhook_deliveries.inc()
            else:
                self.child(self.webhook_failures, "http").inc()
            return status

        return send


_task_types: dict[tuple[str, str, Any], str] = {}  # (content hash, state, branch) -> type


def task_type_of(blueprint: Blueprint, state_name: str, branch: Any) -> str:
    """The task type of a state (or branch), remembered: it is asked on every result."""
    key = (blueprint.content_hash, state_name, branch if isinstance(branch, int) else None)
    found = _task_types.get(key)
    if found is None:
        from server.client_api import task_type_of as lookup  # (a cycle at import time)

        found = lookup(blueprint, state_name, key[2]) or "unknown"
        if len(_task_types) < 10_000:  # for_each branches are many: a cap
            _task_types[key] = found
    return found


class MetricsObserver:
    """The engine's commit hooks (engine/runtime/observe.py), turned into series."""

    def __init__(self, metrics: Metrics) -> None:
        self.m = metrics

    def before_commit(self, machine: Machine, doc: dict[str, Any], fx: Effects) -> Any:
        return state_spans_of(doc, fx)[0]

    def committed(self, machine: Machine, doc: dict[str, Any], fx: Effects, note: Any) -> None:
        m = self.m
        blueprint = str(doc["blueprint"])
        for state, entered, left in note:
            m.child(m.state_duration, blueprint, state).observe(max(0, left - entered) / 1000)
        for event in fx.history:
            kind = event["event"]
            if kind == "task_result":
                task_type = task_type_of(machine.bp, event["state"], event.get("branch"))
                status = str(event.get("status"))
                status = status if status in ("success", "failure") else "other"
                m.child(m.task_run, blueprint, event["state"], task_type, status).observe(
                    event.get("duration_ms", 0) / 1000
                )
            elif kind == "task_retry_scheduled":
                task_type = task_type_of(machine.bp, event["state"], event.get("branch"))
                error = event.get("error") or {}
                m.child(m.retries, blueprint, task_type, m.codes(error.get("code"))).inc()
            elif kind == "task_timeout":
                task_type = task_type_of(machine.bp, event["state"], event.get("branch"))
                reason = str(event.get("timeout"))
                m.child(m.timeouts, blueprint, task_type, reason).inc()
                if event.get("worker"):
                    m.child(m.lease_expiries, task_type, reason).inc()
            elif kind == "task_released":
                task_type = task_type_of(machine.bp, event["state"], event.get("branch"))
                m.child(m.lease_expiries, task_type, "released").inc()
            elif kind == "job_created":
                m.child(m.jobs_created, blueprint).inc()
            elif kind in ENDED_EVENTS:
                m.child(m.jobs_ended, blueprint, ENDED_EVENTS[kind]).inc()
            elif kind in CONTROL_EVENTS:
                m.child(m.job_controls, blueprint, CONTROL_EVENTS[kind]).inc()


# -- HTTP ------------------------------------------------------------------------------------


def route_of(request: web.Request) -> str:
    """The route template (`/api/v1/jobs/{job_id}`), never the raw path: the label set stays
    as small as the router. Requests no route matched are `unmatched`."""
    info = request.match_info
    if info.http_exception is not None:
        return "unmatched"
    resource = info.route.resource
    return resource.canonical if resource is not None else "unmatched"


def http_middleware(metrics: Metrics) -> Callable[..., Any]:
    @web.middleware
    async def count(request: web.Request, handler: Handler) -> web.StreamResponse:
        started = time.perf_counter()
        status = 500
        try:
            response = await handler(request)
            status = response.status
            return response
        except web.HTTPException as exc:
            status = exc.status
            raise
        finally:
            route = route_of(request)
            metrics.child(metrics.http_requests, request.method, route, str(status)).inc()
            metrics.child(metrics.http_duration, request.method, route).observe(
                time.perf_counter() - started
            )

    return count


# -- deployment-wide, read at scrape time -------------------------------------------------------


def task_types(blueprints: Iterable[Blueprint]) -> list[str]:
    """Every task type the loaded blueprints dispatch, sorted, at most MAX_TASK_TYPES."""
    from engine.blueprint.model import ParallelState, TaskState

    found: set[str] = set()
    for blueprint in blueprints:
        for state in blueprint.states.values():
            if isinstance(state, TaskState) and state.spec is not None:
                found.add(state.spec.task_type)
            elif isinstance(state, ParallelState):
                found.update(spec.task_type for spec in state.task_specs)
    return sorted(found)[:MAX_TASK_TYPES]


def queued_at_ms(score: float) -> int:
    """When a queued task was queued, from its queue score (jobdoc.queue_score)."""
    return int(score) % PRIORITY_STEP + QUEUE_EPOCH_MS


async def deployment_families(
    orch: Orchestrator, types: list[str], connected_ms: int, now_ms: int
) -> list[Metric]:
    """The deployment-wide gauges, read in one pipelined round trip (see the module doc)."""
    counts = await orch.deployment_counts(types, connected_ms, now_ms)
    queued = GaugeMetricFamily(
        "interlock_deployment_queued_tasks",
        "Tasks waiting for a worker, by task type (all orchestrators)",
        labels=["task_type"],
    )
    oldest = GaugeMetricFamily(
        "interlock_deployment_oldest_queued_task_age_seconds",
        "Age of the oldest task first in line (highest priority), by task type",
        labels=["task_type"],
    )
    workers = GaugeMetricFamily(
        "interlock_deployment_connected_workers",
        "Workers that registered or heartbeated within HEARTBEAT_TIMEOUT, by task type",
        labels=["task_type"],
    )
    for task_type in types:
        count, head_score, connected = counts.per_type[task_type]
        first = queued_at_ms(head_score) if head_score is not None else None
        queued.add_metric([task_type], count)
        oldest.add_metric([task_type], max(0, now_ms - first) / 1000 if first else 0)
        workers.add_metric([task_type], connected)
    backlog, humans = counts.webhook_backlog, counts.waiting_for_human
    return [
        queued,
        oldest,
        workers,
        GaugeMetricFamily(
            "interlock_deployment_jobs_waiting_for_human",
            "Jobs waiting for a person's approval decision (all orchestrators)",
            value=humans,
        ),
        GaugeMetricFamily(
            "interlock_deployment_webhook_backlog",
            "Ended jobs whose webhook is not delivered yet (all orchestrators)",
            value=backlog,
        ),
    ]


class _Families(Collector):
    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> Iterable[Metric]:
        return self.families


async def exposition(metrics: Metrics, orch: Orchestrator, connected_ms: int) -> bytes:
    """The scrape's body: this process's series, then the deployment's (or, if Redis does
    not answer, `interlock_deployment_up 0` and the per-process series alone)."""
    now_ms = clock.now_ms()
    types = task_types(orch.blueprints())
    up = GaugeMetricFamily(
        "interlock_deployment_up", "1 when the deployment-wide gauges could be read from Redis"
    )
    families: list[Metric] = []
    try:
        families = await deployment_families(orch, types, connected_ms, now_ms)
        up.add_metric([], 1)
    except Exception:  # any Redis failure: the process's own series are still worth having
        up.add_metric([], 0)
    scrape = CollectorRegistry(auto_describe=False)
    scrape.register(_Families([up, *families]))
    return generate_latest(metrics.collectors) + generate_latest(scrape)


CONTENT_TYPE = CONTENT_TYPE_LATEST
