"""`interlock serve`: check everything, then serve until SIGTERM or SIGINT.

Exit status: 0 after a clean stop, 1 when the blueprints, the store or the address are not
usable, 2 for a configuration mistake (settings, token files, schedules.toml). Nothing is
started before every check has passed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import logging
import os
import signal
import sys
from typing import Any

from aiohttp import web

from engine.blueprint.loader import validate_paths
from engine.errors import BlueprintError
from engine.runtime import aio
from engine.runtime.schedules import ScheduleError
from engine.store.client import Store, StoreError
from server import logs
from server.app import build_app, schedules_for
from server.config import Settings, redact_url
from server.errors import ConfigError
from server.limits import (
    ConnectionGuard,
    GuardedSite,
    default_max_connections,
    raise_descriptor_limit,
)

log = logging.getLogger("interlock.server")

STORE_CHECK_TIMEOUT_S = 10.0
SHUTDOWN_TIMEOUT_S = 10.0
KEEPALIVE_TIMEOUT_S = 75.0  # an idle keep-alive connection is closed (aiohttp's default: 1 h)


def flags_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The serve flags, keyed by the variable each one overrides."""
    return {
        "API_HOST": args.host,
        "API_PORT": args.port,
        "REDIS_URL": args.redis_url,
        "BLUEPRINTS_DIR": args.blueprints,
        "CLIENTS_CONFIG_PATH": args.clients_config,
        "WORKERS_CONFIG_PATH": args.workers_config,
        "SCHEDULES_CONFIG_PATH": args.schedules_config,
    }


def _fail(message: str) -> None:
    for line in message.splitlines():
        print(f"interlock serve: {line}", file=sys.stderr)


def serve_command(args: argparse.Namespace) -> int:
    try:
        settings = Settings.from_sources(os.environ, flags_from_args(args))
    except ConfigError as exc:
        _fail(str(exc))
        return 2
    blueprints, problems = validate_paths([settings.blueprints_dir])
    errors = [p for p in problems if p.severity == "error"]
    for problem in problems:
        print(problem, file=sys.stderr)
    if errors:
        _fail(
            f"{len(errors)} error(s) in the blueprints in {settings.blueprints_dir}; "
            f"fix them (interlock validate {settings.blueprints_dir}) and start again"
        )
        return 1
    try:
        schedules = schedules_for(settings, {blueprint.name for blueprint in blueprints})
    except ScheduleError as exc:
        _fail(str(exc))
        return 2
    _setup_logging(settings.log_format)
    return aio.run(_serve(settings, len(blueprints), len(schedules)))


def _setup_logging(log_format: str) -> None:
    logs.setup(log_format, os.environ.get("LOG_LEVEL", "INFO").upper())


async def check_store(settings: Settings) -> str | None:
    """None when the store answers; otherwise what is wrong, without any password."""
    where = redact_url(settings.redis_url)
    try:
        async with asyncio.timeout(STORE_CHECK_TIMEOUT_S):
            store = await Store.connect(
                settings.redis_url,
                partitions=settings.redis_partitions,
                wait_replicas=settings.redis_wait_replicas,
                wait_timeout_ms=settings.redis_wait_timeout_ms,
            )
            try:
                if not await store.ping():
                    return f"the store at {where} does not answer PING"
            finally:
                await store.close()
    except TimeoutError:
        return f"cannot reach the store at {where}: no answer within {STORE_CHECK_TIMEOUT_S:g}s"
    except (StoreError, ValueError, OSError) as exc:
        reason = str(exc).replace(settings.redis_url, where)
        return f"cannot use the store at {where}: {reason}"
    return None


async def shared_generated(settings: Settings) -> Settings:
    """Settings whose generated tokens are those of the first orchestrator on this store,
    so that orchestrators sharing a Redis without configured tokens accept the same
    clients and workers (each stores its proposal only if none is there yet)."""
    if not (
        settings.client_token_generated
        or settings.worker_token_generated
        or settings.webhook_secret_generated
    ):
        return settings
    store = await Store.connect(settings.redis_url, partitions=settings.redis_partitions)
    try:
        changes: dict[str, Any] = {}
        if settings.client_token_generated:
            name, token = settings.client_tokens[0]
            changes["client_tokens"] = ((name, await store.shared_setting("client_token", token)),)
        if settings.worker_token_generated and settings.worker_token is not None:
            token = settings.worker_token
            changes["worker_token"] = await store.shared_setting("worker_token", token)
        if settings.webhook_secret_generated:
            secret = settings.webhook_secret
            changes["webhook_secret"] = await store.shared_setting("webhook_secret", secret)
    finally:
        await store.close()
    return dataclasses.replace(settings, **changes)


async def _serve(settings: Settings, blueprint_count: int, schedule_count: int) -> int:
    raise_descriptor_limit()  # before anything opens sockets: idle long polls need many
    problem = await check_store(settings)
    if problem is not None:
        _fail(problem)
        return 1
    try:
        settings = await shared_generated(settings)
    except StoreError as exc:
        _fail(f"cannot use the store at {redact_url(settings.redis_url)}: {exc}")
        return 1
    # Handlers first: a SIGTERM sent as soon as the listening line is read must stop us
    # cleanly, not kill us with the default action.
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):  # not on Windows
            loop.add_signal_handler(signum, stop.set)
    try:
        return await _run(settings, blueprint_count, schedule_count, stop)
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError):
                loop.remove_signal_handler(signum)


async def _run(
    settings: Settings, blueprint_count: int, schedule_count: int, stop: asyncio.Event
) -> int:
    runner = web.AppRunner(
        build_app(settings),
        handle_signals=False,
        shutdown_timeout=SHUTDOWN_TIMEOUT_S,
        keepalive_timeout=KEEPALIVE_TIMEOUT_S,
    )
    try:
        await runner.setup()  # runs the app's cleanup_ctx: blueprints, store, orchestrator
        guard = ConnectionGuard(
            settings.max_connections or default_max_connections(), settings.header_timeout_s
        )
        site = GuardedSite(runner, settings.host, settings.port, guard)
        await site.start()
    except (ScheduleError, ConfigError) as exc:  # schedules changed; OTEL_* unusable
        _fail(str(exc))
        await runner.cleanup()
        return 2
    except (BlueprintError, StoreError, OSError) as exc:
        reason = str(exc).replace(settings.redis_url, redact_url(settings.redis_url))
        _fail(f"cannot start on {settings.host}:{settings.port}: {reason}")
        await runner.cleanup()
        return 1
    _announce(settings, runner, blueprint_count, schedule_count)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()
    log.info("stopped")
    return 0


def _announce(
    settings: Settings, runner: web.AppRunner, blueprint_count: int, schedule_count: int
) -> None:
    # The one place a secret is shown: one the operator did not set and must learn.
    notice = logs.notice_printer(settings.log_format)
    if settings.client_token_generated:
        token = settings.client_tokens[0][1]
        notice(
            f"no CLIENT_TOKEN set; using generated token {token} (shared by every "
            "orchestrator on this store)"
        )
    if settings.worker_token_generated:
        token = settings.worker_token or ""
        notice(
            f"no WORKER_TOKEN set; using generated token {token} (shared by every "
            "orchestrator on this store)"
        )
    if settings.webhook_secret_generated:
        notice(
            f"no WEBHOOK_SECRET set; signing webhooks with generated secret "
            f"{settings.webhook_secret} (shared by every orchestrator on this store)"
        )
    port = settings.port
    for address in runner.addresses:
        if isinstance(address, tuple):
            port = int(address[1])
            break
    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    blueprints = f"{blueprint_count} blueprint{'s' if blueprint_count != 1 else ''}"
    if schedule_count:
        blueprints += f", {schedule_count} schedule{'s' if schedule_count != 1 else ''}"
    print(
        f"Interlock listening on http://{host}:{port} (store: {settings.store_label}, "
        f"{blueprints})",
        flush=True,
    )
