"""An in-process worker against real `interlock serve` processes on a real Redis.

Each test reads as a story: given a server and a worker, when something happens, then the
job and its history show it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any

import pytest
import redis

from tests.worker_sdk.support import (
    client,
    eventually,
    fast_config,
    history,
    orchestrator,
    running,
    submit,
    wait_terminal,
)
from worker_sdk import (
    InvalidInputError,
    OrchestratorConfig,
    PermanentError,
    Result,
    TaskContext,
    Worker,
)

pytestmark = pytest.mark.timeout(60)

SCHEMA = {"type": "object", "required": ["want"], "properties": {"want": {"type": "string"}}}


class Outcomes:
    """A worker serving `outcome`, answering as `params.want` says, and what it saw."""

    def __init__(self, config: Any) -> None:
        self.worker = Worker(config)
        self.cancelled: list[str] = []
        self.started: list[str] = []
        self.worker.task("outcome", input_schema=SCHEMA)(self.outcome)
        self.worker.task("echo")(self.echo)

    async def echo(self, params: dict[str, Any], ctx: TaskContext) -> dict[str, Any]:
        return {"n": params.get("n"), "worker": "in-process"}

    async def outcome(self, params: dict[str, Any], ctx: TaskContext) -> Any:
        want = params["want"]
        self.started.append(ctx.task_id)
        if want == "ok":
            await ctx.progress(0.4, "warming up")
            return {"ok": True, "task": ctx.task_id}
        if want == "out_of_stock":
            return Result("out_of_stock", {"missing": ["sku-9"]})
        if want == "permanent":
            raise PermanentError("card reported stolen", {"card": "x-42"})
        if want == "invalid":
            raise InvalidInputError("amount must be positive")
        if want == "boom":
            raise RuntimeError("disk on fire")
        if want == "hang":
            try:
                await asyncio.sleep(60)
            except asyncio.CancelledError:
                assert ctx.cancelled
                self.cancelled.append(ctx.task_id)
                raise
        if want == "hang_sync":
            return await asyncio.to_thread(self.spin, ctx)
        raise AssertionError(want)

    def spin(self, ctx: TaskContext) -> dict[str, Any]:
        deadline = time.monotonic() + 30
        while not ctx.cancelled and time.monotonic() < deadline:
            time.sleep(0.01)
        self.cancelled.append(ctx.task_id)
        return {}


def events(entries: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [e for e in entries if e["event"] == name]


async def test_results_statuses_errors_and_progress(tmp_path: Path, redis_url: str) -> None:
    """Given a worker whose handler answers in every documented way, when one job per way
    runs, then each ends as the blueprint says with the documented error code."""
    with orchestrator(tmp_path, redis_url) as server:
        app = Outcomes(fast_config(tmp_path, server.url))
        async with running(app.worker), client(server) as http:
            wants: list[Any] = ["ok", "out_of_stock", "permanent", "invalid", "boom", 5]
            jobs = {str(w): await submit(http, "jobs/sdk_outcomes", {"want": w}) for w in wants}
            done = {w: await wait_terminal(http, j) for w, j in jobs.items()}
            entries = {w: await history(http, j) for w, j in jobs.items()}

    assert done["ok"]["status"] == "finished"
    assert done["ok"]["result"]["ok"] is True
    progress = events(entries["ok"], "task_progress")
    assert [(p["progress"], p["message"]) for p in progress] == [(0.4, "warming up")]
    assert done["out_of_stock"]["status"] == "failed"
    assert [r["status"] for r in events(entries["out_of_stock"], "task_result")] == ["out_of_stock"]
    codes = {
        w: [r.get("error", {}).get("code") for r in events(entries[w], "task_result")]
        for w in ("permanent", "invalid", "boom", "5")
    }
    assert codes == {
        "permanent": ["PERMANENT_ERROR"],  # not retried
        "invalid": ["INVALID_INPUT_ERROR"],
        "boom": ["TRANSIENT_ERROR", "TRANSIENT_ERROR"],  # retried: max_attempts 2
        "5": ["INVALID_INPUT_ERROR"],  # input_schema: want must be a string
    }
    boom = events(entries["boom"], "task_result")[0]["error"]
    assert boom["message"] == "RuntimeError: disk on fire"
    stolen = events(entries["permanent"], "task_result")[0]["error"]
    assert stolen["details"] == {"card": "x-42"}
    assert all(d["status"] == "failed" for w, d in done.items() if w != "ok")


@pytest.mark.parametrize("want", ["hang", "hang_sync"])
async def test_cancelling_a_job_cancels_its_running_handler(
    tmp_path: Path, redis_url: str, want: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Given a handler that would run for a minute, when the client cancels the job, then
    the orchestrator's heartbeat answer cancels the handler and the worker reports it."""
    caplog.set_level(logging.INFO, logger="worker_sdk")
    with orchestrator(tmp_path, redis_url) as server:
        app = Outcomes(fast_config(tmp_path, server.url))
        async with running(app.worker), client(server) as http:
            job_id = await submit(http, "jobs/sdk_outcomes", {"want": want})
            await eventually(lambda: app.started, what="the task starting")
            async with http.post(f"/api/v1/jobs/{job_id}/cancel") as resp:
                assert resp.status in (200, 202), await resp.text()
            await eventually(lambda: app.cancelled, what="the handler being cancelled")
            await eventually(lambda: not app.worker.task_ids, what="the result being settled")
            job = await wait_terminal(http, job_id)
    assert job["status"] == "cancelled"
    assert app.cancelled == app.started
    assert f"cancelling task {app.started[0]}: the orchestrator asked" in caplog.text
    assert f"result of task {app.started[0]} ignored by {server.url}: job_cancelled" in caplog.text


async def test_shutdown_cancels_what_outlives_the_grace_and_nothing_is_lost(
    tmp_path: Path, redis_url: str
) -> None:
    """Given a handler still running when its worker stops, when the grace period ends,
    then it is cancelled and reported, and the job is retried by the next worker."""
    with orchestrator(tmp_path, redis_url) as server:
        async with client(server) as http:
            first = Outcomes(fast_config(tmp_path, server.url, worker_id="first"))
            await first.worker.start()
            job_id = await submit(http, "jobs/sdk_outcomes", {"want": "hang"})
            await eventually(lambda: first.started, what="the task starting")
            await first.worker.stop(grace=0.2)
            assert first.cancelled == first.started

            second = Outcomes(fast_config(tmp_path, server.url, worker_id="second"))
            second.outcome = second.echo  # type: ignore[method-assign]
            second.worker.skills.clear()
            second.worker.task("outcome")(second.echo)
            async with running(second.worker):
                job = await wait_terminal(http, job_id)
            entries = await history(http, job_id)
    assert job["status"] == "finished"
    results = events(entries, "task_result")
    assert [(r["worker"], r["status"]) for r in results] == [
        ("first", "cancelled"),
        ("second", "success"),
    ]


async def test_the_worker_registers_again_when_the_orchestrator_forgets_it(
    tmp_path: Path, redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Given a registered worker, when its registration disappears from the store (a TTL,
    a flushed Redis), then its next heartbeat is refused and it registers again."""
    caplog.set_level(logging.INFO, logger="worker_sdk")
    with orchestrator(tmp_path, redis_url) as server, redis.Redis.from_url(redis_url) as store:
        key = "il:{w:sdk-worker}:worker"  # engine/store/keys.py: Keys.worker()
        app = Outcomes(fast_config(tmp_path, server.url))
        async with running(app.worker), client(server) as http:
            await eventually(lambda: store.exists(key), what="the registration")
            store.delete(key)
            await eventually(lambda: store.exists(key), what="a new registration")
            job = await wait_terminal(http, await submit(http, "jobs/sdk_outcomes", {"want": "ok"}))
    assert job["status"] == "finished"
    assert f"orchestrator {server.url} forgot this worker" in caplog.text


async def test_an_individual_token_from_workers_toml_is_accepted(
    tmp_path: Path, redis_url: str
) -> None:
    """Given an orchestrator with a token of its own for `gpu-7` in workers.toml, when the
    worker presents that token, then it registers and runs jobs."""
    toml = tmp_path / "workers.toml"
    toml.write_text('[gpu-7]\ntoken = "gpu-7-own-token"\n')
    with orchestrator(tmp_path, redis_url, env={"WORKERS_CONFIG_PATH": str(toml)}) as server:
        config = fast_config(
            tmp_path,
            worker_id="gpu-7",
            orchestrators=(OrchestratorConfig(server.url, "gpu-7-own-token"),),
        )
        app = Outcomes(config)
        async with running(app.worker), client(server) as http:
            job = await wait_terminal(http, await submit(http, "jobs/sdk_echo", {"n": 1}))
            entries = await history(http, job["id"])
    assert job["status"] == "finished"
    assert [r["worker"] for r in events(entries, "task_result")] == ["gpu-7"]
