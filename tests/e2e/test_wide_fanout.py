"""A `for_each` over 10,000 items, end to end: a real `interlock serve` on a real Redis and
worker processes built on worker_sdk (issues 11 and 18). The orchestrator is SIGKILLed
part-way through and another takes over at the same address: the fan-out still joins every
result, once, in item order.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from tests.e2e.test_flow_over_http import client, submit, terminal, until, view
from tests.support.processes import ROOT, WORKER_TOKEN, serve

pytestmark = pytest.mark.timeout(600)

ITEMS = 10_000

WIDE = """
blueprint: wide
api_endpoint: jobs/wide
start: fan
states:
  fan:
    parallel:
      for_each: initial_data.items
      task: echo
      params: {item: "${ item }"}
    on: {success: done}
  done:
    end: finished
    output:
      count: "${ length(steps.fan) }"
      first: "${ steps.fan[0].item }"
      last: "${ steps.fan[-1].item }"
      sum: "${ sum(steps.fan[].item) }"
"""


@contextlib.contextmanager
def echo_workers(tmp_path: Path, url: str, count: int) -> Iterator[None]:
    """`count` processes of bench.echo_worker: worker_sdk, answering each task with its params."""
    processes = []
    try:
        for i in range(count):
            env = {
                **os.environ,
                "ORCHESTRATOR_URL": url,
                "WORKER_TOKEN": WORKER_TOKEN,
                "WORKER_ID": f"echo-{i}",
                "MAX_CONCURRENT_TASKS": "100",
                "WORKER_POLL_TIMEOUT": "1",
                "WORKER_SHUTDOWN_TIMEOUT": "1",
            }
            with (tmp_path / f"echo-{i}.log").open("wb") as log:
                processes.append(
                    subprocess.Popen(
                        [sys.executable, "-m", "bench.echo_worker"],
                        cwd=ROOT,
                        env=env,
                        stdout=log,
                        stderr=subprocess.STDOUT,
                    )
                )
        yield
    finally:
        for process in processes:
            process.kill()
            process.wait(timeout=10)


async def test_a_for_each_over_ten_thousand_items_survives_a_sigkill(
    tmp_path: Path, redis_url: str
) -> None:
    folder = tmp_path / "blueprints"
    folder.mkdir()
    (folder / "wide.yaml").write_text(WIDE)
    # The shipped HEARTBEAT_TIMEOUT (60 s): tasks handed to the killed server's polls are
    # taken back at the workers' first heartbeats without them (seconds).
    settings: dict[str, str] = {}
    with serve(tmp_path, redis_url, folder, settings) as first:
        port = first.port
        with echo_workers(tmp_path, first.url, 2):
            # given a job whose for_each runs 10,000 branches
            async with client(first) as http:
                job_id = await submit(http, "jobs/wide", {"items": list(range(ITEMS))})

                # when a fifth of them have ended, its orchestrator is SIGKILLed
                async def fifth() -> bool:
                    job = await view(http, job_id)
                    return int(job["parallel"]["done"]) >= ITEMS // 5

                await until("2,000 branches done", fifth, within_s=300)
            first.process.kill()
            first.process.wait(timeout=10)
            # and another one starts at the same address (the workers find it there)
            with serve(tmp_path, redis_url, folder, settings, port=port) as second:
                async with client(second) as http:
                    job = await terminal(http, job_id, within_s=400)
    # then the job finished with every branch's result, in item order
    assert job["status"] == "finished", job.get("error")
    expected = {"count": ITEMS, "first": 0, "last": ITEMS - 1, "sum": sum(range(ITEMS))}
    assert job["result"] == expected
    # and nothing of the fan-out's items and results is left in the job's hash
    store = aioredis.Redis.from_url(redis_url, decode_responses=True)
    try:
        keys = [key async for key in store.scan_iter(match=f"*:job:{job_id}")]
        assert len(keys) == 1
        fields = [str(name) for name in await store.hkeys(keys[0])]
    finally:
        await store.aclose()
    assert not [name for name in fields if name.startswith(("i:", "r:"))]
    assert len([name for name in fields if name.startswith("h:")]) > 2 * ITEMS
