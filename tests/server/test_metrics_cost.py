"""What metrics add to the hot path, counted rather than timed.

A timed assertion would fail on a busy machine, and so would a comparison of two processes'
totals (background loops run more or less often as the machine is slower or faster). What
does not move with the load is the number of Python function calls, and calls into C, that
the metrics layer makes for a job: the HTTP middleware per request, the commit hooks and the
store timings per change. Here they are counted with `sys.setprofile` for the same jobs,
against every call the process makes (server and test client), and bounded.

For these jobs (8 requests and 4 job changes each), with prometheus-client's `Counter` and
`Histogram` on the hot path (a lock and a label lookup on every update, a Python loop over
the buckets on every observation) the layer made 599 calls a job, 1.2% of all; with
plain-number series folded in at scrape time it makes 275, 0.55%."""

from __future__ import annotations

import sys
from pathlib import Path
from types import FrameType
from typing import Any

import prometheus_client

import engine.runtime.observe
import server.metrics
from server.app import build_app_around
from tests.server.conftest import make_settings, serve, started
from tests.server.helpers import Client, job, poll, register, result, submit

IMAGE = {"url": "https://example.com/cat.png"}
STEPS = {
    "fetch_image": {"path": "/tmp/cat.png"},
    "resize_image": {"path": "/tmp/small.png"},
    "publish_image": {"url": "https://cdn/x.png"},
}
JOBS = 20
CHANGES = 4  # job changes (commits) a job makes: created, and a result for each task
BOUND = 350  # calls the metrics layer may make a job
SHARE = 0.01  # and its share of all the calls
LAYER = (  # the files of the metrics layer
    server.metrics.__file__,
    engine.runtime.observe.__file__,
    str(Path(prometheus_client.__file__).parent),
)


async def run_jobs(api: Client, count: int) -> None:
    """`count` image_pipeline jobs, one after the other: submit, three polls and results,
    and a read of the finished job (8 requests and 4 job changes a job)."""
    for _ in range(count):
        job_id = await submit(api, "jobs/image_pipeline", IMAGE)
        for _ in STEPS:
            task = await poll(api, list(STEPS))
            body = {"job_id": job_id, "task_id": task["task_id"], "data": STEPS[task["type"]]}
            assert await result(api, body) == {"status": "accepted"}
        assert (await job(api, job_id))["status"] == "finished"


def in_layer(frame: FrameType | None) -> bool:
    return frame is not None and frame.f_code.co_filename.startswith(LAYER)


async def calls_per_job(tmp_path: Path, metrics: str) -> tuple[float, float]:
    """(every call, the metrics layer's calls) on the event loop's thread per job, after a
    warm-up. A call is the layer's if the layer made it or it entered the layer."""
    settings = make_settings(tmp_path, METRICS=metrics)
    async with started(settings) as orchestrator:
        api = await serve(build_app_around(orchestrator, settings))
        try:
            await register(api, list(STEPS))
            await run_jobs(api, 3)  # warm-up: caches, label sets, lazy imports
            calls = layer = 0

            def count(frame: FrameType, event: str, arg: Any) -> None:
                nonlocal calls, layer
                if event == "call":
                    calls += 1
                    layer += in_layer(frame) or in_layer(frame.f_back)
                elif event == "c_call":
                    calls += 1
                    layer += in_layer(frame)

            sys.setprofile(count)
            try:
                await run_jobs(api, JOBS)
            finally:
                sys.setprofile(None)
            return calls / JOBS, layer / JOBS
        finally:
            await api.close()


async def test_the_metrics_layer_makes_a_small_share_of_the_calls_a_job_makes(
    tmp_path: Path,
) -> None:
    calls, layer = await calls_per_job(tmp_path, "on")
    share = layer / calls
    problem = f"metrics made {layer:.0f} of {calls:.0f} calls a job ({share:.2%})"
    assert layer > 2 * CHANGES + 8, "the hooks did not run: " + problem
    assert layer <= BOUND, problem
    assert share <= SHARE, problem


async def test_with_metrics_off_only_the_engines_empty_hooks_are_called(tmp_path: Path) -> None:
    _, layer = await calls_per_job(tmp_path, "off")
    assert layer == 2 * CHANGES  # NoObserver's before_commit and committed
