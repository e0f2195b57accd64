"""What one wide `for_each` costs, by width: one job of N items at a time on a real Redis.

    .venv/bin/python -m bench.fanout [--items 10,100,1000,10000] [--workers 4]
                                     [--max-concurrency M] [--rounds R] [--cprofile FILE]

Starts a redis-server on a free port, `interlock serve` and W echo workers (bench.echo_worker),
then for each width N submits one job whose `for_each` runs N echo branches and waits for it
to finish. Per width it prints the time from submit to the finished job (the join included),
the orchestrator's CPU per branch (utime+stime from /proc), Redis commands per branch (INFO
commandstats, scripts' inner commands included), and the orchestrator's peak RSS. With
`--rounds R` the widths are run R times, interleaved (10, 100, ..., 10, 100, ...), and the
median of each is printed. Exits 1 if a job does not finish.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from bench.harness import (
    CLIENT_TOKEN,
    RedisServer,
    command_calls,
    cpu_seconds,
    echo_workers,
    peak_rss_mib,
    serve,
)

BLUEPRINT = """\
blueprint: bench_wide
version: 1
description: one parallel for_each over initial_data.items (echo each), joined, then end
api_endpoint: jobs/bench_wide
start: fan
states:
  fan:
    parallel:
      for_each: initial_data.items
      task: echo
      params: {{item: "${{ item }}"}}{limit}
    on: {{success: done}}
  done:
    end: finished
    output: {{count: "${{ length(steps.fan) }}", last: "${{ steps.fan[-1].item }}"}}
"""


@dataclass
class Run:
    items: int
    wall_s: float
    cpu_ms_per_branch: float
    commands_per_branch: float
    finished: bool


async def one_job(base: str, items: int, deadline_s: float) -> tuple[float, bool]:
    """Submit a job of `items` branches; (seconds until it is seen finished, finished?)."""
    headers = {"X-Client-Token": CLIENT_TOKEN, "Content-Type": "application/json"}
    body = json.dumps({"initial_data": {"items": list(range(items))}})
    timeout = aiohttp.ClientTimeout(total=deadline_s + 60)
    async with aiohttp.ClientSession(headers=headers, timeout=timeout) as http:
        started = time.perf_counter()
        async with http.post(f"{base}/api/v1/jobs/bench_wide", data=body) as resp:
            answer = await resp.json()
            if resp.status != 202:
                print(f"  submit refused: HTTP {resp.status} {answer}")
                return time.perf_counter() - started, False
        url = f"{base}/api/v1/jobs/{answer['job_id']}"
        while time.perf_counter() - started < deadline_s:
            async with http.get(url, params={"wait": "30"}) as resp:
                doc = await resp.json()
            if doc["status"] in ("finished", "failed", "cancelled"):
                elapsed = time.perf_counter() - started
                expected = {"count": items, "last": items - 1}
                if doc["status"] != "finished" or doc.get("result") != expected:
                    print(f"  job ended {doc['status']}: {json.dumps(doc)[:300]}")
                    return elapsed, False
                return elapsed, True
        return time.perf_counter() - started, False


async def measure(base: str, redis: RedisServer, pid: int, items: int, deadline_s: float) -> Run:
    client = redis.client()
    try:
        before_calls = await command_calls(client)
        before_cpu = cpu_seconds(pid)
        wall_s, finished = await one_job(base, items, deadline_s)
        cpu = cpu_seconds(pid) - before_cpu
        calls = await command_calls(client) - before_calls
    finally:
        await client.aclose()
    commands = sum(calls.values()) - 1  # the second INFO
    return Run(items, wall_s, 1000 * cpu / items, commands / items, finished)


@contextlib.contextmanager
def _running(redis: RedisServer) -> Iterator[None]:
    redis.start()
    try:
        yield
    finally:
        redis.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.fanout", description=__doc__)
    parser.add_argument("--items", default="10,100,1000,10000", help="widths, comma-separated")
    parser.add_argument("--workers", type=int, default=4, help="echo worker processes")
    parser.add_argument("--slots", type=int, default=200, help="tasks each worker runs at once")
    parser.add_argument("--max-concurrency", type=int, default=0, help="0: not set")
    parser.add_argument("--rounds", type=int, default=1, help="interleaved runs per width")
    parser.add_argument("--deadline", type=float, default=600.0, help="seconds per job")
    parser.add_argument(
        "--cprofile", type=Path, default=None, help="write the orchestrator's cProfile here"
    )
    args = parser.parse_args(argv)
    widths = [int(w) for w in args.items.split(",")]
    limit = f"\n      max_concurrency: {args.max_concurrency}" if args.max_concurrency else ""
    runs: dict[int, list[Run]] = {w: [] for w in widths}
    ok = True
    redis = RedisServer()
    with tempfile.TemporaryDirectory(prefix="interlock-fanout-") as tmp, _running(redis):
        workdir = Path(tmp)
        folder = workdir / "blueprints"
        folder.mkdir()
        (folder / "bench_wide.yaml").write_text(BLUEPRINT.format(limit=limit))
        env = {"MAX_BODY_BYTES": str(64 << 20)}
        with (
            serve(workdir, redis.url, folder, env, cprofile=args.cprofile) as server,
            echo_workers(workdir, server.url, args.workers, slots=args.slots),
        ):
            asyncio.run(
                one_job(server.url, 10, args.deadline)
            )  # warm up: workers registered, code loaded
            for _ in range(args.rounds):
                for width in widths:
                    job = measure(server.url, redis, server.pid, width, args.deadline)
                    run = asyncio.run(job)
                    runs[width].append(run)
                    ok = ok and run.finished
                    print(
                        f"  {width:>7} items: {run.wall_s:8.2f} s  "
                        f"{run.cpu_ms_per_branch:6.2f} ms CPU/branch  "
                        f"{run.commands_per_branch:5.1f} Redis commands/branch"
                        + ("" if run.finished else "  NOT FINISHED"),
                        flush=True,
                    )
            rss = peak_rss_mib(server.pid)
    print(f"\nmedians of {args.rounds} round(s); orchestrator peak RSS {rss:.0f} MiB")
    print(f"{'items':>8} {'submit->finished s':>19} {'CPU ms/branch':>14} {'commands/branch':>16}")
    for width, done in runs.items():
        print(
            f"{width:>8} {statistics.median(r.wall_s for r in done):>19.2f} "
            f"{statistics.median(r.cpu_ms_per_branch for r in done):>14.2f} "
            f"{statistics.median(r.commands_per_branch for r in done):>16.1f}"
        )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
