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

The per-process series are plain numbers (`CounterSeries`, `HistogramSeries`, `HttpSeries`)
updated on the hot paths without locks or label lookups, and folded into prometheus-client's
families by `ProcessCollector` when scraped (what that saves: bench/README.md, "What the
metrics layer costs"; tests/server/test_metrics_cost.py bounds it).
"""

from __future__ import annotations

import math
import time
from bisect import bisect_left
from collections.abc import Callable, Iterable, Mapping, Sequence
from itertools import accumulate
from typing import TYPE_CHECKING, Any

from aiohttp import web
from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client import metrics as prometheus_metrics
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample
from prometheus_client.utils import floatToGoString

from engine import clock
from engine.runtime.jobdoc import Effects
from engine.runtime.observe import STATE_SINCE, state_spans_of
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


Key = tuple[str, ...]


def _use_created() -> bool:
    """Whether `_created` samples are written: prometheus-client's own switch (on unless
    PROMETHEUS_DISABLE_CREATED_SERIES is set), so the exposition is the library's."""
    return bool(getattr(prometheus_metrics, "_use_created", True))


class CounterSeries:
    """A counter by label values, kept as plain numbers and turned into prometheus-client's
    `CounterMetricFamily` at scrape time (`ProcessCollector`).

    prometheus-client's own `Counter` takes a lock and looks its child up by label values on
    every `inc()`; here an increment is one dict operation. Every series is updated and read
    on the event loop only, so nothing needs a lock."""

    def __init__(self, name: str, documentation: str, labels: Sequence[str] = ()) -> None:
        self.name = name
        self.documentation = documentation
        self.labels = tuple(labels)
        self.values: dict[Key, float] = {}
        self.created: dict[Key, float] = {}
        if not self.labels:  # as prometheus-client: an unlabelled counter starts at 0
            self._new(())

    def inc(self, key: Key) -> None:
        if key in self.values:
            self.values[key] += 1.0
        else:
            self._new(key)
            self.values[key] = 1.0

    def _new(self, key: Key) -> None:
        self.values[key] = 0.0
        self.created[key] = time.time()

    def family(self, created: bool) -> Metric:
        family = CounterMetricFamily(self.name, self.documentation, labels=self.labels)
        for key, value in self.values.items():
            family.add_metric(key, value, created=self.created[key] if created else None)
        return family


class HistogramSeries:
    """A histogram by label values: per label set one list, a count per bucket (not
    cumulative) and the sum last. An observation is a `bisect` and two additions; the
    buckets are made cumulative at scrape time, as prometheus-client's `Histogram` does."""

    def __init__(
        self,
        name: str,
        documentation: str,
        labels: Sequence[str],
        buckets: Sequence[float] = Histogram.DEFAULT_BUCKETS,
    ) -> None:
        self.name = name
        self.documentation = documentation
        self.labels = tuple(labels)
        bounds = [float(b) for b in buckets]
        if bounds[-1] != math.inf:
            bounds.append(math.inf)
        self.bounds = tuple(bounds)
        self.les = tuple(floatToGoString(b) for b in bounds)  # type: ignore[no-untyped-call]
        self.cells: dict[Key, list[float]] = {}
        self.created: dict[Key, float] = {}

    def observe(self, key: Key, value: float) -> None:
        cell = self.cells.get(key)
        if cell is None:
            cell = self.cell(key)
        cell[bisect_left(self.bounds, value)] += 1
        cell[-1] += value

    def cell(self, key: Key) -> list[float]:
        """The counts of `key`'s label set, made on first use."""
        found = self.cells.get(key)
        if found is None:
            found = self.cells[key] = [0.0] * (len(self.bounds) + 1)
            self.created[key] = time.time()
        return found

    def family(self, created: bool) -> Metric:
        return histogram_family(self, self.cells.items(), self.created, created)


def histogram_family(
    series: HistogramSeries,
    cells: Iterable[tuple[Key, list[float]]],
    created_at: Mapping[Key, float],
    created: bool,
) -> Metric:
    """The Prometheus family of `series` with these cells: cumulative buckets, `_count`,
    `_sum` and (if `created`) `_created`, sample for sample as prometheus-client writes."""
    family = HistogramMetricFamily(series.name, series.documentation, labels=series.labels)
    for key, cell in cells:
        buckets = list(zip(series.les, accumulate(cell[:-1]), strict=True))
        family.add_metric(key, buckets, cell[-1])
        if created:
            labels = dict(zip(series.labels, key, strict=True))
            family.samples.append(Sample(f"{series.name}_created", labels, created_at[key]))
    return family


class HttpSeries:
    """`interlock_http_requests_total` and `interlock_http_request_duration_seconds` from one
    set of cells: one histogram cell by (method, route, status). The counter is a cell's
    count; the histogram by (method, route) adds up the cells of every status at scrape time.
    A request costs one dict lookup, keyed by aiohttp's resource object, which the router
    keeps for the life of the app (every unmatched request shares the key None)."""

    def __init__(self) -> None:
        self.requests = CounterSeries(
            "interlock_http_requests",
            "HTTP requests answered by this process, by route template and status",
            ["method", "route", "status"],
        )
        self.duration = HistogramSeries(
            "interlock_http_request_duration_seconds",
            "Time to answer an HTTP request (long polls included), by route template",
            ["method", "route"],
        )
        self.by_label = HistogramSeries(self.duration.name, "", ["method", "route", "status"])
        self.by_resource: dict[tuple[str, Any, int], list[float]] = {}

    def observe(self, method: str, resource: Any, status: int, seconds: float) -> None:
        cell = self.by_resource.get((method, resource, status))
        if cell is None:
            cell = self._cell(method, resource, status)
        cell[bisect_left(self.duration.bounds, seconds)] += 1
        cell[-1] += seconds

    def _cell(self, method: str, resource: Any, status: int) -> list[float]:
        # aiohttp takes dozens of methods (any token with its pure-Python parser): the
        # unusual ones are `other`, and (not being a key here) take this slower path each
        # time rather than grow the dict.
        method = method if method in METHODS else "other"
        route = "unmatched" if resource is None else resource.canonical
        cell = self.by_label.cell((method, route, str(status)))
        self.by_resource[(method, resource, status)] = cell
        return cell

    def families(self, created: bool) -> list[Metric]:
        requests = CounterMetricFamily(
            self.requests.name, self.requests.documentation, labels=self.requests.labels
        )
        routes: dict[Key, list[float]] = {}
        first: dict[Key, float] = {}
        for key, cell in self.by_label.cells.items():
            since = self.by_label.created[key]
            requests.add_metric(key, sum(cell[:-1]), created=since if created else None)
            route = key[:2]
            total = routes.get(route)
            if total is None:
                routes[route], first[route] = list(cell), since
            else:
                routes[route] = [a + b for a, b in zip(total, cell, strict=True)]
                first[route] = min(first[route], since)
        duration = histogram_family(self.duration, routes.items(), first, created)
        return [requests, duration]


class Metrics:
    """This process's metrics, in a registry of their own (two apps share nothing). The
    series are plain numbers updated on the hot paths (HTTP middleware, commit hooks, store
    timings) and turned into Prometheus families only when scraped (`ProcessCollector`)."""

    def __init__(self) -> None:
        self.http = HttpSeries()
        self.jobs_created = CounterSeries(
            "interlock_jobs_created", "Jobs this process created", ["blueprint"]
        )
        self.jobs_ended = CounterSeries(
            "interlock_jobs_ended",
            "Jobs this process moved to a terminal status",
            ["blueprint", "status"],
        )
        self.job_controls = CounterSeries(
            "interlock_job_controls",
            "Pauses, resumes, events and redrives this process applied to jobs",
            ["blueprint", "control"],
        )
        self.state_duration = HistogramSeries(
            "interlock_state_duration_seconds",
            "Time a job spent in a state, observed by the process that moved it on",
            ["blueprint", "state"],
            LONG_BUCKETS,
        )
        self.task_run = HistogramSeries(
            "interlock_task_run_duration_seconds",
            "Time from a worker taking a task to its result, by result status",
            ["blueprint", "state", "task_type", "status"],
            LONG_BUCKETS,
        )
        self.retries = CounterSeries(
            "interlock_task_retries",
            "Task attempts scheduled again, by the error code that caused it",
            ["blueprint", "task_type", "reason"],
        )
        self.timeouts = CounterSeries(
            "interlock_task_timeouts",
            "Task timeouts, by kind: dispatch, run, heartbeat, worker_lost",
            ["blueprint", "task_type", "reason"],
        )
        self.lease_expiries = CounterSeries(
            "interlock_lease_expiries",
            "Tasks taken back from a worker: run, heartbeat, worker_lost, released",
            ["task_type", "reason"],
        )
        self.webhook_deliveries = CounterSeries(
            "interlock_webhook_deliveries", "Webhook POSTs answered with 2xx by the receiver"
        )
        self.webhook_failures = CounterSeries(
            "interlock_webhook_failures",
            "Webhook POSTs that failed: http (a non-2xx answer) or network",
            ["reason"],
        )
        self.store_batch = HistogramSeries(
            "interlock_store_batch_size",
            "Items per Redis round trip: job changes (commit), task queues (lease), heartbeats",
            ["operation"],
            BATCH_BUCKETS,
        )
        self.store_latency = HistogramSeries(
            "interlock_store_latency_seconds",
            "Time of one batched Redis round trip, by operation",
            ["operation"],
        )
        self.codes = LabelCap()
        self.collectors = CollectorRegistry(auto_describe=True)
        self.collectors.register(ProcessCollector(self))

    def families(self) -> list[Metric]:
        """Every per-process family, in the order the series were declared."""
        created = _use_created()
        out = self.http.families(created)
        for series in (
            self.jobs_created,
            self.jobs_ended,
            self.job_controls,
            self.state_duration,
            self.task_run,
            self.retries,
            self.timeouts,
            self.lease_expiries,
            self.webhook_deliveries,
            self.webhook_failures,
            self.store_batch,
            self.store_latency,
        ):
            out.append(series.family(created))
        return out

    # -- hooks -------------------------------------------------------------------------------

    def store_timing(self, operation: str, items: int, seconds: float) -> None:
        key = (operation,)
        self.store_batch.observe(key, items)
        self.store_latency.observe(key, seconds)

    def observer(self) -> MetricsObserver:
        """The commit hooks. The observer also records when a job entered its state
        (`observe.STATE_SINCE`, as `observe.StateClock` does), so it must go last."""
        return MetricsObserver(self)

    def counting_sender(self, sender: Sender) -> Sender:
        """`sender`, counting its deliveries and failures."""

        async def send(url: str, body: bytes, headers: Mapping[str, str]) -> int:
            try:
                status = await sender(url, body, headers)
            except OSError:
                self.webhook_failures.inc(("network",))
                raise
            if 200 <= status < 300:
                self.webhook_deliveries.inc(())
            else:
                self.webhook_failures.inc(("http",))
            return status

        return send


class ProcessCollector(Collector):
    """The per-process series as Prometheus families, built when the registry is scraped."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterable[Metric]:
        return self.metrics.families()


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


# What a committed history event counts, by its kind; the other kinds count nothing.
Count = Callable[["Metrics", "Machine", str, dict[str, Any]], None]


def _task_result(m: Metrics, machine: Machine, blueprint: str, event: dict[str, Any]) -> None:
    task_type = task_type_of(machine.bp, event["state"], event.get("branch"))
    status = event.get("status")
    status = status if status in ("success", "failure") else "other"
    key = (blueprint, event["state"], task_type, status)
    m.task_run.observe(key, event.get("duration_ms", 0) / 1000)


def _retry(m: Metrics, machine: Machine, blueprint: str, event: dict[str, Any]) -> None:
    task_type = task_type_of(machine.bp, event["state"], event.get("branch"))
    error = event.get("error") or {}
    m.retries.inc((blueprint, task_type, m.codes(error.get("code"))))


def _timeout(m: Metrics, machine: Machine, blueprint: str, event: dict[str, Any]) -> None:
    task_type = task_type_of(machine.bp, event["state"], event.get("branch"))
    reason = str(event.get("timeout"))
    m.timeouts.inc((blueprint, task_type, reason))
    if event.get("worker"):
        m.lease_expiries.inc((task_type, reason))


def _released(m: Metrics, machine: Machine, blueprint: str, event: dict[str, Any]) -> None:
    task_type = task_type_of(machine.bp, event["state"], event.get("branch"))
    m.lease_expiries.inc((task_type, "released"))


def _created(m: Metrics, machine: Machine, blueprint: str, event: dict[str, Any]) -> None:
    m.jobs_created.inc((blueprint,))


def _ended(status: str) -> Count:
    def count(m: Metrics, machine: Machine, blueprint: str, event: dict[str, Any]) -> None:
        m.jobs_ended.inc((blueprint, status))

    return count


def _control(control: str) -> Count:
    def count(m: Metrics, machine: Machine, blueprint: str, event: dict[str, Any]) -> None:
        m.job_controls.inc((blueprint, control))

    return count


COUNTS: dict[str, Count] = {
    "task_result": _task_result,
    "task_retry_scheduled": _retry,
    "task_timeout": _timeout,
    "task_released": _released,
    "job_created": _created,
    **{kind: _ended(status) for kind, status in ENDED_EVENTS.items()},
    **{kind: _control(control) for kind, control in CONTROL_EVENTS.items()},
}


class MetricsObserver:
    """The engine's commit hooks (engine/runtime/observe.py), turned into series. It is the
    state clock too: `before_commit` reads the entry time of the state the job was in, then
    writes the new one (so it goes after any other observer that reads it)."""

    def __init__(self, metrics: Metrics) -> None:
        self.m = metrics

    def before_commit(self, machine: Machine, doc: dict[str, Any], fx: Effects) -> Any:
        spans, doc[STATE_SINCE] = state_spans_of(doc, fx)
        return spans

    def committed(self, machine: Machine, doc: dict[str, Any], fx: Effects, note: Any) -> None:
        m = self.m
        blueprint = doc["blueprint"]
        for state, entered, left in note:
            m.state_duration.observe((blueprint, state), max(0, left - entered) / 1000)
        for event in fx.history:
            count = COUNTS.get(event["event"])
            if count is not None:
                count(m, machine, blueprint, event)


# -- HTTP ------------------------------------------------------------------------------------

# Methods kept as label values; any other method a client sends is counted as `other`.
METHODS = frozenset(("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"))


def _resource_of(request: web.Request) -> Any:
    """The router's resource that matched `request`, or None (`unmatched`). Its route
    template (`/api/v1/jobs/{job_id}`), never the raw path, is the `route` label: the label
    set stays as small as the router."""
    info = request.match_info
    if info.http_exception is not None:
        return None
    return info.route.resource


def http_middleware(
    metrics: Metrics, answer_error: Callable[[web.Request, Exception], web.StreamResponse]
) -> Callable[..., Any]:
    """Counts and times every request, and (one layer less than a middleware of its own)
    answers its handler's failures with `answer_error` (server/errors.py `error_answer`),
    so that it counts the final status."""
    observe = metrics.http.observe
    clock = time.perf_counter

    @web.middleware
    async def count(request: web.Request, handler: Handler) -> web.StreamResponse:
        started = clock()
        status = 500
        try:
            try:
                response = await handler(request)
            except Exception as exc:  # (a cancellation is no Exception: it passes)
                response = answer_error(request, exc)
            status = response.status
            return response
        except web.HTTPException as exc:  # a redirect, which answer_error passes on
            status = exc.status
            raise
        finally:
            observe(request.method, _resource_of(request), status, clock() - started)

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
