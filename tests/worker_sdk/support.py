"""Helpers for the worker SDK's integration tests: orchestrators, worker processes, clients."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp

from tests.support.processes import (
    CLIENT_TOKEN,
    ROOT,
    WORKER_TOKEN,
    Server,
    WorkerProcess,
    serve,
)
from worker_sdk import OrchestratorConfig, Worker, WorkerConfig

BLUEPRINTS = Path(__file__).parent / "blueprints"
TERMINAL = ("finished", "failed", "cancelled")


# -- orchestrators ------------------------------------------------------------------------------


@contextlib.contextmanager
def orchestrator(
    tmp_path: Path,
    redis_url: str,
    *,
    port: int | None = None,
    blueprints: Path = BLUEPRINTS,
    env: Mapping[str, str] | None = None,
) -> Iterator[Server]:
    """A real `interlock serve` process with the SDK tests' blueprints."""
    with serve(tmp_path, redis_url, blueprints, env, port=port) as server:
        yield server


# -- workers ------------------------------------------------------------------------------------


def fast_config(tmp_path: Path, *urls: str, **changes: Any) -> WorkerConfig:
    """A configuration with test-sized intervals, for in-process workers."""
    config = WorkerConfig(
        orchestrators=tuple(OrchestratorConfig(url, WORKER_TOKEN) for url in urls),
        worker_id="sdk-worker",
        heartbeat_interval=0.2,
        poll_timeout=1.0,
        backoff_initial=0.05,
        backoff_max=0.5,
        result_retry_initial=0.05,
        result_retry_max=0.5,
        shutdown_timeout=5.0,
        payload_dir=(tmp_path / "payloads").resolve(),
    )
    return replace(config, **changes)


@contextlib.asynccontextmanager
async def running(worker: Worker) -> AsyncIterator[Worker]:
    await worker.start()
    try:
        yield worker
    finally:
        await worker.stop()


def fast_env(**extra: str) -> dict[str, str]:
    """The environment of a worker process with test-sized intervals."""
    return {
        "WORKER_TOKEN": WORKER_TOKEN,
        "WORKER_HEARTBEAT_INTERVAL": "0.2",
        "WORKER_POLL_TIMEOUT": "1",
        "POLL_BACKOFF_INITIAL": "0.05",
        "POLL_BACKOFF_MAX": "0.5",
        "RESULT_RETRY_INITIAL_DELAY": "0.05",
        "RESULT_RETRY_MAX_DELAY": "0.5",
        "LOG_LEVEL": "DEBUG",
        **extra,
    }


@contextlib.contextmanager
def worker_process(
    tmp_path: Path, name: str, env: Mapping[str, str], script: Path | None = None
) -> Iterator[WorkerProcess]:
    """A worker process built on the SDK: `script`, or tests/worker_sdk/apps/recorder.py."""
    log = tmp_path / f"worker-{name}.log"
    command = (
        [sys.executable, str(script)]
        if script
        else [sys.executable, "-m", "tests.worker_sdk.apps.recorder"]
    )
    environment = {**os.environ, "PYTHONPATH": str(ROOT), "WORKER_ID": name, **env}
    with log.open("wb") as sink:
        process = subprocess.Popen(
            command, cwd=ROOT, env=environment, stdout=sink, stderr=subprocess.STDOUT
        )
    handle = WorkerProcess(process, log)
    try:
        yield handle
    finally:
        handle.stop()


def records(path: Path) -> list[list[str]]:
    """The lines the recorder app wrote, split in words."""
    if not path.exists():
        return []
    return [line.split() for line in path.read_text().splitlines() if line.strip()]


# -- the client API -----------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def client(server: Server) -> AsyncIterator[aiohttp.ClientSession]:
    headers = {"X-Client-Token": CLIENT_TOKEN}
    async with aiohttp.ClientSession(server.url, headers=headers) as http:
        yield http


async def submit(http: aiohttp.ClientSession, endpoint: str, data: Any) -> str:
    async with http.post(f"/api/v1/{endpoint}", json={"initial_data": data}) as resp:
        body = await resp.json()
        assert resp.status == 202, body
        job_id: str = body["job_id"]
        return job_id


async def job(http: aiohttp.ClientSession, job_id: str, wait_s: float = 0) -> dict[str, Any]:
    async with http.get(f"/api/v1/jobs/{job_id}", params={"wait": f"{wait_s:g}"}) as resp:
        assert resp.status == 200, await resp.text()
        doc: dict[str, Any] = await resp.json()
        return doc


async def wait_terminal(
    http: aiohttp.ClientSession, job_id: str, within_s: float = 30
) -> dict[str, Any]:
    deadline = time.monotonic() + within_s
    doc = await job(http, job_id)
    while doc["status"] not in TERMINAL:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"job {job_id} is still {doc['status']} after {within_s} s")
        doc = await job(http, job_id, min(5.0, left))
    return doc


async def history(http: aiohttp.ClientSession, job_id: str) -> list[dict[str, Any]]:
    async with http.get(f"/api/v1/jobs/{job_id}/history") as resp:
        assert resp.status == 200, await resp.text()
        events: list[dict[str, Any]] = (await resp.json())["events"]
        return events


async def eventually(check: Any, within_s: float = 10, what: str = "condition") -> None:
    """Wait until `check()` is true (polling every 20 ms)."""
    deadline = time.monotonic() + within_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen within {within_s} s")
        await asyncio.sleep(0.02)
