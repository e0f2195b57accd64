"""Stories told through HTTP only: a real server process, real worker processes, real Redis."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.conftest import require_file
from tests.support.processes import CLIENT_TOKEN, ROOT, Server, serve, worker

pytestmark = pytest.mark.timeout(180)


@contextlib.asynccontextmanager
async def client(server: Server) -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(server.url, headers={"X-Client-Token": CLIENT_TOKEN}) as http:
        yield http


async def submit(http: aiohttp.ClientSession, endpoint: str, data: dict[str, Any]) -> str:
    async with http.post(f"/api/v1/{endpoint}", json={"initial_data": data}) as resp:
        body = await resp.json()
        assert resp.status == 202, body
        job_id: str = body["job_id"]
        return job_id


async def wait_terminal(
    http: aiohttp.ClientSession, job_id: str, within_s: float = 30
) -> dict[str, Any]:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        async with http.get(f"/api/v1/jobs/{job_id}", params={"wait": "5"}) as resp:
            assert resp.status == 200
            job: dict[str, Any] = await resp.json()
        if job["status"] in ("finished", "failed", "cancelled"):
            return job
    raise AssertionError(f"job {job_id} is still {job['status']} after {within_s} s")


async def history(http: aiohttp.ClientSession, job_id: str) -> list[dict[str, Any]]:
    async with http.get(f"/api/v1/jobs/{job_id}/history") as resp:
        assert resp.status == 200
        events: list[dict[str, Any]] = (await resp.json())["events"]
        return events


EXAMPLES: dict[str, tuple[dict[str, Any], str]] = {
    "jobs/image_pipeline": (
        {"url": "https://example.test/cat.png"},
        "fetch_image,resize_image,publish_image",
    ),
    "jobs/process_order": ({"items": [1, 2], "priority": "express"}, "check_inventory,ship"),
    "jobs/charge": ({"card_token": "tok", "amount": 5}, "charge_card,send_receipt"),
    "jobs/reminder": ({"user": "ada"}, "send_email"),
}


async def test_the_example_blueprints_run_to_finished(tmp_path: Path, any_redis_url: str) -> None:
    """Given a server with the example blueprints and a worker for their tasks,
    when a client submits one job per example, then each ends `finished`."""
    skills = ",".join(sorted({s for _, (_, sk) in EXAMPLES.items() for s in sk.split(",")}))
    with (
        serve(tmp_path, any_redis_url) as server,
        worker(tmp_path, server.url, "w-examples", skills, "--slots", "4"),
    ):
        async with client(server) as http:
            jobs = {
                endpoint: await submit(http, endpoint, data)
                for endpoint, (data, _) in EXAMPLES.items()
            }
            for endpoint, job_id in jobs.items():
                job = await wait_terminal(http, job_id)
                assert job["status"] == "finished", (endpoint, job)
            order = await wait_terminal(http, jobs["jobs/process_order"])
            assert order["result"]["speed"] == "express"
            events = [e["event"] for e in await history(http, jobs["jobs/reminder"])]
            assert events[0] == "job_created"
            assert events[-1] == "job_finished"


RETRY = """
blueprint: retry_fast
api_endpoint: jobs/retry_fast
start: work
states:
  work:
    task: echo
    params: {payload: "${ initial_data }"}
    retry: {max_attempts: 3, backoff: fixed, initial: 100ms}
    timeouts: {heartbeat: 1s}
    on: {success: done}
  done: {end: finished}
"""


def _folder(tmp_path: Path, text: str) -> Path:
    folder = tmp_path / "blueprints"
    folder.mkdir(exist_ok=True)
    (folder / "b.yaml").write_text(text)
    return folder


async def test_a_transient_failure_is_retried_by_the_next_attempt(
    tmp_path: Path, redis_url: str
) -> None:
    with (
        serve(tmp_path, redis_url, _folder(tmp_path, RETRY)) as server,
        worker(tmp_path, server.url, "w-flaky", "echo", "--fail-first", "1"),
    ):
        async with client(server) as http:
            job_id = await submit(http, "jobs/retry_fast", {"x": 1})
            job = await wait_terminal(http, job_id)
            assert job["status"] == "finished"
            events = [e["event"] for e in await history(http, job_id)]
            assert events.count("task_retry_scheduled") == 1
            assert events.count("task_result") == 2


async def test_a_worker_killed_mid_task_loses_nothing(tmp_path: Path, any_redis_url: str) -> None:
    """Given a worker that dies as soon as it takes a task, when a healthy worker joins,
    then the task is leased again and the job finishes exactly once."""
    env = {"HEARTBEAT_TIMEOUT": "1s"}
    with serve(tmp_path, any_redis_url, _folder(tmp_path, RETRY), env=env) as server:
        async with client(server) as http:
            job_id = await submit(http, "jobs/retry_fast", {"x": 1})
            with worker(tmp_path, server.url, "w-doomed", "echo", "--exit-on-task") as doomed:
                doomed.wait_for("task ")
                assert doomed.process.wait(timeout=10) == 17
            with worker(tmp_path, server.url, "w-healthy", "echo"):
                job = await wait_terminal(http, job_id)
            assert job["status"] == "finished"
            events = await history(http, job_id)
            assert [e["event"] for e in events].count("job_finished") == 1
            timeouts = [e for e in events if e["event"] == "task_timeout"]
            assert timeouts
            assert timeouts[0]["worker"] == "w-doomed"


async def test_two_servers_one_killed_under_load(tmp_path: Path, redis_url: str) -> None:
    """Given two servers on one Redis and workers on both, when one server is SIGKILLed
    while jobs run, then every submitted job still ends, and none finishes twice."""
    env = {"HEARTBEAT_TIMEOUT": "1s"}
    folder = _folder(tmp_path, RETRY)
    with (
        serve(tmp_path, redis_url, folder, env=env) as first,
        serve(tmp_path, redis_url, folder, env=env) as second,
        worker(tmp_path, first.url, "w-first", "echo", "--slots", "4", "--delay", "0.05"),
        worker(tmp_path, second.url, "w-second", "echo", "--slots", "4", "--delay", "0.05"),
    ):
        async with client(first) as on_first, client(second) as on_second:
            jobs = []
            for i in range(60):
                target = on_first if i % 2 else on_second
                jobs.append(await submit(target, "jobs/retry_fast", {"i": i}))
                if i == 30:
                    first.kill()
                    on_first = on_second  # the client fails over to the surviving server
            results = await asyncio.gather(*(wait_terminal(on_second, j, 60) for j in jobs))
            assert [job["status"] for job in results] == ["finished"] * len(jobs)
            for job_id in jobs:
                events = [e["event"] for e in await history(on_second, job_id)]
                assert events.count("job_finished") == 1
                assert events.count("job_created") == 1


def _spawn(argv: list[str], cwd: Path, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as sink:
        return subprocess.Popen(argv, cwd=cwd, env=env, stdout=sink, stderr=subprocess.STDOUT)


async def test_the_published_avtomatika_worker_completes_a_job(
    tmp_path: Path, redis_url: str
) -> None:
    """A worker built with the published avtomatika-worker SDK, unmodified, runs a task."""
    script = tmp_path / "avtomatika_echo.py"
    script.write_text(
        "from avtomatika_worker import Worker\n"
        "worker = Worker(worker_type='compat', max_concurrent_tasks=2)\n"
        "@worker.skill('echo')\n"
        "async def echo(params: dict, task_id: str, job_id: str, send_progress):\n"
        "    await send_progress(task_id, job_id, 0.5, 'halfway')\n"
        "    return {'data': {'echoed': params}}\n"
        "if __name__ == '__main__':\n"
        "    worker.run()\n"
    )
    python = require_file(ROOT / ".venv-compat" / "bin" / "python", "make compat")
    # Traced, so that its tasks carry a W3C traceparent in tracing_context: the SDK must
    # ignore what it does not know.
    traced = {"OTEL_TRACES_EXPORTER": "console"}
    with serve(tmp_path, redis_url, _folder(tmp_path, RETRY), env=traced) as server:
        env = {
            **os.environ,
            "ORCHESTRATOR_URL": server.url,
            "WORKER_ID": "avtomatika-1",
            "WORKER_TOKEN": "test-worker-token",
            "TASK_POLL_TIMEOUT": "2",
            "HEARTBEAT_INTERVAL": "1",
        }
        log = tmp_path / "avtomatika.log"
        process = _spawn([str(python), str(script)], tmp_path, env, log)
        try:
            async with client(server) as http:
                job_id = await submit(http, "jobs/retry_fast", {"hello": "world"})
                job = await wait_terminal(http, job_id, 60)
                assert job["status"] == "finished", log.read_text()
                assert job["result"]["echoed"] == {"payload": {"hello": "world"}}
                events = await history(http, job_id)
                assert any(e["event"] == "task_progress" for e in events), events
                assert {e.get("worker") for e in events if e["event"] == "task_result"} == {
                    "avtomatika-1"
                }
        finally:
            process.kill()
            process.wait(timeout=10)
