"""The aiohttp application: middleware, the routes of the three API areas, and the engine's
life.

`build_app(settings)` owns everything: a `cleanup_ctx` loads the blueprints and the
schedules, connects the store, opens the webhook session, starts the orchestrator, and on
shutdown stops and closes them in reverse order.
`build_app_around(orchestrator, settings)` serves an orchestrator someone else owns (tests).
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web

from engine.blueprint.loader import load_blueprints
from engine.runtime import webhooks
from engine.runtime.jobdoc import RuntimeSettings
from engine.runtime.observe import Observer, Observers, StateClock
from engine.runtime.orchestrator import Orchestrator, OrchestratorSettings
from engine.runtime.registry import Registry
from engine.runtime.schedules import Schedule, load_schedules
from engine.store.client import Store
from server.auth import ClientAuth, WorkerAuth
from server.client_api import add_client_routes
from server.config import Settings
from server.console import add_console
from server.errors import (
    SECURITY_HEADERS,
    ConfigError,
    JsonResponse,
    error_answer,
    error_middleware,
    json_response,
)
from server.logs import LoggingObserver, context_middleware
from server.metrics import CONTENT_TYPE, Metrics, exposition, http_middleware
from server.offload import Offload
from server.openapi import docs_page, document
from server.public import add_public_routes
from server.state import (
    CLIENT_AUTH,
    CLOSING,
    LONG_POLLS,
    METRICS,
    OFFLOAD,
    ORCHESTRATOR,
    SETTINGS,
    WORKER_AUTH,
    release_long_polls,
)
from server.webhooks import WebhookSender
from server.worker_api import SKILLS, SkillCache, add_worker_routes


def runtime_settings(settings: Settings) -> RuntimeSettings:
    return RuntimeSettings(
        default_run_timeout_ms=settings.default_run_timeout_ms,
        heartbeat_timeout_ms=settings.heartbeat_timeout_ms,
        max_transitions=settings.max_transitions,
        retention_ms=settings.job_retention_ms,
    )


def orchestrator_settings(settings: Settings) -> OrchestratorSettings:
    return OrchestratorSettings(
        worker_ttl_ms=settings.worker_ttl_ms,
        webhook_secret=settings.webhook_secret,
        clients=tuple(name for name, _ in settings.client_tokens),
        rate_limits=settings.task_rate_limits,
    )


def build_app(settings: Settings) -> web.Application:
    """The server, owning its store and orchestrator for the app's lifetime."""
    app = _base_app(settings)
    app.cleanup_ctx.append(_engine)
    return app


def build_app_around(
    orchestrator: Orchestrator, settings: Settings, *, tracing: Any = None
) -> web.Application:
    """The server around a running orchestrator that the caller starts and stops;
    `tracing`, an opentelemetry-sdk TracerProvider, traces its jobs."""
    app = _base_app(settings)
    app[ORCHESTRATOR] = orchestrator
    _observe(app.get(METRICS), orchestrator, tracing)
    return app


def _observe(metrics: Metrics | None, orchestrator: Orchestrator, tracing: Any = None) -> None:
    """Hang metrics and the DEBUG job log on the engine's hooks (engine/runtime/observe.py)."""
    observers: list[Observer] = []
    if tracing is not None:  # an opentelemetry-sdk TracerProvider (server/tracing.py)
        from server.tracing import TracingObserver

        observers.append(TracingObserver(tracing))
    if metrics is not None:  # it keeps the state clock too, so it goes last (observe.py)
        observers.append(metrics.observer())
        orchestrator.time_store(metrics.store_timing)
    elif observers:  # traces time states from the clock's field
        observers.append(StateClock())  # the clock last: see observe.py
    if logging.getLogger("interlock.jobs").isEnabledFor(logging.DEBUG):
        observers.insert(0, LoggingObserver())
    # Each observer costs on every commit (linear3 lost a fifth of its throughput to the
    # ones that ran whatever the settings): only the ones something consumes are hung on.
    if observers:
        orchestrator.observer = observers[0] if len(observers) == 1 else Observers(observers)


def _base_app(settings: Settings) -> web.Application:
    # The request's worker and job go into every log line, which only JSON logs show.
    middlewares = [error_middleware]
    if settings.log_format == "json":
        middlewares.insert(0, context_middleware())
    if settings.metrics:
        metrics = Metrics()
        # Outermost: it sees the final status. It answers errors itself when nothing sits
        # between it and the handlers (each middleware is a layer on every request).
        counting = http_middleware(metrics, error_answer)
        middlewares = [counting, *middlewares] if len(middlewares) > 1 else [counting]
    app = web.Application(client_max_size=settings.max_body_bytes, middlewares=middlewares)
    app[SETTINGS] = settings
    # No token: the contract is public. (Added before the /api/v1 routes, so that the
    # catch-all POST does not shadow them.)
    app.router.add_get("/api/v1/openapi.json", serve_openapi)
    app.router.add_get("/api/docs", serve_docs)
    if settings.metrics:
        app[METRICS] = metrics
        app.router.add_get("/metrics", serve_metrics)
    app[CLIENT_AUTH] = ClientAuth.from_settings(settings)
    app[WORKER_AUTH] = WorkerAuth.from_settings(settings)
    app[CLOSING] = asyncio.Event()
    app[OFFLOAD] = Offload(off_loop_bytes=settings.check_off_loop_bytes)
    app.on_startup.append(_start_offload)
    app.on_cleanup.append(_close_offload)
    app[LONG_POLLS] = set()
    app[SKILLS] = SkillCache()
    app.on_shutdown.append(_release_long_polls)
    app.on_response_prepare.append(_security_headers)
    # The three areas' routes sit on this one router (server/routing.py).
    add_client_routes(app)
    add_worker_routes(app)
    add_public_routes(app)
    add_console(app)  # the web console at `/`
    return app


async def _start_offload(app: web.Application) -> None:
    app[OFFLOAD].start()


async def _close_offload(app: web.Application) -> None:
    app[OFFLOAD].close()


async def _security_headers(request: web.Request, response: web.StreamResponse) -> None:
    # Runs before aiohttp adds its defaults, which only fill headers not yet set. A route
    # with its own policy (the web console's pages) keeps it. A JSON answer was built with
    # them (server/errors.py).
    if type(response) is JsonResponse:
        return
    headers = response.headers
    for name, value in SECURITY_HEADERS.items():
        if name == "Server":
            headers[name] = value
        else:
            headers.setdefault(name, value)


def _tracing_from_env() -> Any:
    """The TracerProvider OTEL_TRACES_EXPORTER asks for, or None (server/tracing.py)."""
    if os.environ.get("OTEL_TRACES_EXPORTER", "none").strip().lower() in ("", "none"):
        return None
    try:
        from server.tracing import provider_from_env
    except ImportError as exc:
        raise ConfigError(
            f"OTEL_TRACES_EXPORTER is set but OpenTelemetry is not installed ({exc}); "
            "pip install opentelemetry-sdk"
        ) from None
    try:
        return provider_from_env()
    except (ImportError, ValueError) as exc:
        raise ConfigError(f"OTEL_TRACES_EXPORTER: {exc}") from None


async def serve_openapi(request: web.Request) -> web.Response:
    """The OpenAPI 3.1 document, with one submission path per loaded blueprint."""
    blueprints = request.app[ORCHESTRATOR].blueprints()
    return json_response(document(blueprints))


async def serve_docs(request: web.Request) -> web.Response:
    return web.Response(text=docs_page(), content_type="text/html", charset="utf-8")


async def serve_metrics(request: web.Request) -> web.Response:
    """The Prometheus exposition: this process's series and the deployment's gauges."""
    if ORCHESTRATOR not in request.app:
        return json_response({"error": {"code": "starting", "message": "starting up"}}, status=503)
    body = await exposition(
        request.app[METRICS], request.app[ORCHESTRATOR], request.app[SETTINGS].heartbeat_timeout_ms
    )
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})


async def _release_long_polls(app: web.Application) -> None:
    """Runs before aiohttp waits for open requests: long polls answer now (204, or the job
    as it is) instead of holding the shutdown for up to a minute."""
    release_long_polls(app)


def schedules_for(settings: Settings, blueprint_names: set[str]) -> list[Schedule]:
    """The schedules of SCHEDULES_CONFIG_PATH, if set; ScheduleError names file and table."""
    if settings.schedules_path is None:
        return []
    return load_schedules(settings.schedules_path, blueprint_names)


async def _engine(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    blueprints = load_blueprints([settings.blueprints_dir])
    schedules = schedules_for(settings, {blueprint.name for blueprint in blueprints})
    tracing = _tracing_from_env()
    store = await Store.connect(
        settings.redis_url,
        partitions=settings.redis_partitions,
        wait_replicas=settings.redis_wait_replicas,
        wait_timeout_ms=settings.redis_wait_timeout_ms,
    )
    try:
        async with WebhookSender.session_for_webhooks(settings.webhook_policy) as session:
            sender: webhooks.Sender = WebhookSender(session, settings.webhook_policy)
            if METRICS in app:
                sender = app[METRICS].counting_sender(sender)
            orchestrator = Orchestrator(
                store,
                Registry(blueprints, runtime_settings(settings)),
                orchestrator_settings(settings),
                webhook_sender=sender,
                schedules=schedules,
            )
            _observe(app.get(METRICS), orchestrator, tracing)
            await orchestrator.start()
            try:
                app[ORCHESTRATOR] = orchestrator
                yield
            finally:
                await orchestrator.stop()
    finally:
        await store.close()
        if tracing is not None:
            tracing.shutdown()  # exports the spans still buffered
