"""1,000 idle long-polling workers held by one orchestrator: its Redis connections and RSS.

    .venv/bin/python -m bench.idle_workers [--workers 1000] [--hold 15]

Starts a redis-server and `interlock serve`, registers `--workers` worker ids over the
worker API, then opens one long poll per id (GET /_worker/workers/{id}/tasks/next) from this
one process, each heartbeating every `--heartbeat` seconds (as the SDK does by default;
the heartbeats share a pool of 100 connections, where each SDK worker has its own).
While they wait it prints the orchestrator's Redis connections (CLIENT LIST,
without the bench's own, which are named `interlock-bench`) and its RSS. Then it submits one
linear3 job to check the polls are live (one of them must get the task) and finishes it.
Exits 1 if fewer polls were open than asked, or the job did not finish.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import aiohttp

from bench.blueprints import ENDPOINTS, write_blueprints
from bench.harness import (
    BENCH_CLIENT_NAME,
    CLIENT_TOKEN,
    WORKER_TOKEN,
    RedisServer,
    Server,
    cpu_seconds,
    machine_summary,
    peak_rss_mib,
    rss_mib,
    serve,
)

POLL_S = 60  # each poll is held this long (WORKER_POLL_MAX_SECONDS is raised to match)
BEAT_CONNECTIONS = 100  # the heartbeats' pool
POLLS_PER_S = 1000


class Fleet:
    """Many worker ids, each with one long poll open at a time, on one HTTP session."""

    def __init__(
        self,
        http: aiohttp.ClientSession,
        base: str,
        count: int,
        beat_http: aiohttp.ClientSession | None = None,
    ) -> None:
        self.http = http
        # Heartbeats go over their own small pool: a connection each beside each poll would
        # need two descriptors a worker in this one process (20,000 for 10,000 workers).
        self.beat_http = beat_http or http
        self.base = base
        self.ids = [f"idle-{i:04d}" for i in range(count)]
        self.open_polls = 0  # polls whose request has been sent (the server holds them)
        self.started_polls = 0
        self.all_sent = asyncio.Event()  # set when open_polls reaches started_polls
        self.tasks: asyncio.Queue[tuple[str, dict[str, Any]]] = asyncio.Queue()
        self.errors: Counter[str] = Counter()
        self.beats = 0

    def headers(self, worker_id: str) -> dict[str, str]:
        return {"X-Worker-ID": worker_id, "X-Worker-Token": WORKER_TOKEN}

    async def register(self, worker_id: str) -> None:
        body = {
            "worker_id": worker_id,
            "worker_type": "bench-idle",
            "supported_skills": [{"name": "echo", "type": "echo"}],
        }
        async with self.http.post(
            f"{self.base}/_worker/workers/register", json=body, headers=self.headers(worker_id)
        ) as resp:
            if resp.status != 200:
                raise RuntimeError(f"register {worker_id}: HTTP {resp.status} {await resp.text()}")

    async def poll_forever(self, worker_id: str) -> None:
        url = f"{self.base}/_worker/workers/{worker_id}/tasks/next"
        params = {"timeout": str(POLL_S), "available_skills": "echo"}
        self.started_polls += 1
        while True:
            sent = SimpleNamespace(sent=False, fleet=self)  # see poll_tracing
            try:
                async with self.http.get(
                    url, params=params, headers=self.headers(worker_id), trace_request_ctx=sent
                ) as resp:
                    status = resp.status
                    body = await resp.read()
            except aiohttp.ClientError as exc:
                self.errors[type(exc).__name__] += 1
                await asyncio.sleep(1)
                continue
            finally:
                if sent.sent:
                    self.open_polls -= 1
            if status == 200:
                await self.tasks.put((worker_id, json.loads(body)))
            elif status != 204:
                self.errors[f"HTTP {status}"] += 1
                await asyncio.sleep(1)

    def sent(self, request: SimpleNamespace) -> None:
        """A poll's request has been written (see `poll_tracing`)."""
        if not request.sent:
            request.sent = True
            self.open_polls += 1
            if self.open_polls >= self.started_polls:
                self.all_sent.set()

    async def polls_sent(self, deadline_s: float) -> None:
        """Until every poll started so far has sent its request, or `deadline_s` passed."""
        if self.open_polls < self.started_polls:
            self.all_sent.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.all_sent.wait(), deadline_s)

    async def heartbeats(self, worker_id: str, every_s: float) -> None:
        """A heartbeat every `every_s` seconds, the first at a random point of the period."""
        url = f"{self.base}/_worker/workers/{worker_id}"
        body = {"worker_id": worker_id, "status": "idle", "current_tasks": []}
        await asyncio.sleep(random.uniform(0, every_s))
        while True:
            try:
                headers = self.headers(worker_id)
                async with self.beat_http.patch(url, json=body, headers=headers) as resp:
                    await resp.read()
                    if resp.status != 200:
                        self.errors[f"heartbeat HTTP {resp.status}"] += 1
                    self.beats += 1
            except aiohttp.ClientError as exc:
                self.errors[f"heartbeat {type(exc).__name__}"] += 1
            await asyncio.sleep(every_s)

    async def answer(self, worker_id: str, task: dict[str, Any]) -> None:
        body = {
            "job_id": task["job_id"],
            "task_id": task["task_id"],
            "worker_id": worker_id,
            "status": "success",
            "data": task.get("params", {}),
        }
        async with self.http.post(
            f"{self.base}/_worker/tasks/result", json=body, headers=self.headers(worker_id)
        ) as resp:
            if resp.status != 200:
                raise RuntimeError(f"result: HTTP {resp.status} {await resp.text()}")


def poll_tracing() -> aiohttp.TraceConfig:
    """Counts a poll as open once its request is written: before that the server does not
    hold it, and this process may be the one that is late."""

    async def on_headers_sent(
        _session: aiohttp.ClientSession, context: SimpleNamespace, _params: object
    ) -> None:
        request = context.trace_request_ctx
        if isinstance(request, SimpleNamespace) and isinstance(request.fleet, Fleet):
            request.fleet.sent(request)

    config = aiohttp.TraceConfig()
    config.on_request_headers_sent.append(on_headers_sent)
    return config


@dataclass
class Connections:
    total: int
    recent: int  # used within the last RECENT_S seconds (the others idle in the pool)
    by_command: Counter[str]  # by last command


RECENT_S = 2


async def orchestrator_connections(redis: RedisServer) -> Connections:
    """The Redis connections that are not the bench's own (CLIENT LIST)."""
    client = redis.client()
    try:
        clients = await client.client_list()
    finally:
        await client.aclose()
    theirs = [c for c in clients if c.get("name") != BENCH_CLIENT_NAME]
    return Connections(
        total=len(theirs),
        recent=sum(1 for c in theirs if int(c.get("idle", 0)) <= RECENT_S),
        by_command=Counter(str(c.get("cmd", "?")) for c in theirs),
    )


async def _main(
    server: Server,
    redis: RedisServer,
    count: int,
    hold_s: float,
    heartbeat_s: float,
    register_batch: int,
) -> int:
    connector = aiohttp.TCPConnector(limit=0)  # one connection per open poll
    timeout = aiohttp.ClientTimeout(total=POLL_S + 30)
    failures = 0
    beat_connector = aiohttp.TCPConnector(limit=BEAT_CONNECTIONS)
    async with (
        aiohttp.ClientSession(
            connector=connector, timeout=timeout, trace_configs=[poll_tracing()]
        ) as http,
        aiohttp.ClientSession(connector=beat_connector, timeout=timeout) as beat_http,
    ):
        fleet = Fleet(http, server.url, count, beat_http)
        started = time.perf_counter()
        # In batches: the orchestrator's redis-py pool refuses more than 100 commands at once
        # ("Too many connections", answered 503), and its pool keeps every connection it
        # opened, so the batch size sets a floor under the connection count measured below.
        for start in range(0, count, register_batch):
            batch = fleet.ids[start : start + register_batch]
            await asyncio.gather(*(fleet.register(w) for w in batch))
        print(
            f"registered {count} workers, {register_batch} at a time, "
            f"in {time.perf_counter() - started:.1f} s"
        )
        rss_before = rss_mib(server.pid)
        before = await orchestrator_connections(redis)
        # Polls open at most POLLS_PER_S a second, as a fleet starts: 10,000 connects at once
        # overflow the listen backlog, and the client's SYN retries back off for longer than a
        # poll. Each batch waits for the one before to have sent its requests: on a loaded
        # machine this one process falls behind, and a connection that has sent no request
        # HEADER_TIMEOUT (10 s) after its connect is closed by the server.
        polls = []
        opening = time.perf_counter()
        for start in range(0, count, POLLS_PER_S // 10):
            batch = fleet.ids[start : start + POLLS_PER_S // 10]
            polls += [asyncio.create_task(fleet.poll_forever(w)) for w in batch]
            await asyncio.sleep(0.1)
            await fleet.polls_sent(POLL_S)
        print(
            f"long polls sent:                      {fleet.open_polls} "
            f"in {time.perf_counter() - opening:.1f} s"
        )
        # The heartbeats start once the polls are open, for the same reason: their pool's
        # first connections must not wait behind thousands of poll connects in this process.
        beats = []
        if heartbeat_s > 0:
            beats = [asyncio.create_task(fleet.heartbeats(w, heartbeat_s)) for w in fleet.ids]
        await asyncio.sleep(hold_s / 2)  # the second half of the hold: no start-up burst
        beats_start = fleet.beats
        cpu_start, cpu_at = cpu_seconds(server.pid), time.perf_counter()
        own_cpu_start = time.process_time()
        await asyncio.sleep(hold_s / 2)
        elapsed = time.perf_counter() - cpu_at
        cpu_share = (cpu_seconds(server.pid) - cpu_start) / elapsed
        own_cpu_share = (time.process_time() - own_cpu_start) / elapsed
        beat_rate = (fleet.beats - beats_start) / elapsed
        during = await orchestrator_connections(redis)
        connections = during.total
        rss = rss_mib(server.pid)
        print(f"open long polls:                      {fleet.open_polls}")
        if heartbeat_s > 0:
            every = f"each worker every {heartbeat_s:g} s"
            print(f"heartbeats answered meanwhile:        {fleet.beats} ({every})")
            print(
                f"heartbeats answered a second:         {beat_rate:.0f} in the second half "
                f"(asked: {count / heartbeat_s:.0f})"
            )
        print(f"orchestrator Redis connections:       {before.total} after registering")
        print(
            f"orchestrator Redis connections:       {during.total} while the polls wait, "
            f"{during.recent} of them used in the last {RECENT_S} s "
            f"(by last command: {dict(during.by_command)})"
        )
        print(f"orchestrator CPU while they wait:     {100 * cpu_share:.0f}% of one core")
        print(f"this client's CPU meanwhile:          {100 * own_cpu_share:.0f}% of one core")
        print(f"orchestrator RSS before the polls:    {rss_before:.1f} MiB")
        peak = peak_rss_mib(server.pid)
        print(f"orchestrator RSS while they wait:     {rss:.1f} MiB (peak {peak:.1f} MiB)")
        if fleet.errors:
            print(f"poll errors: {dict(fleet.errors)}")
        verdicts = [
            ("1,000 idle workers on <= 10 Redis connections", connections <= 10),
            ("orchestrator RSS < 200 MB", rss * 1.048576 < 200),
            (f"{count} polls open at once", fleet.open_polls >= count),
        ]
        # Are the polls live? One linear3 job: some idle worker must get its task.
        submitted = time.perf_counter()
        headers = {"X-Client-Token": CLIENT_TOKEN}
        async with http.post(
            f"{server.url}/api/v1/{ENDPOINTS['bench_linear3']}",
            json={"initial_data": {"n": 1}},
            headers=headers,
        ) as resp:
            job_id = (await resp.json())["job_id"]
        worker_id, task = await asyncio.wait_for(fleet.tasks.get(), 10)
        picked_ms = (time.perf_counter() - submitted) * 1000
        await fleet.answer(worker_id, task)
        async with http.get(
            f"{server.url}/api/v1/jobs/{job_id}", params={"wait": "10"}, headers=headers
        ) as resp:
            status = (await resp.json())["status"]
        print(
            f"a job submitted now: task picked up by {worker_id} after {picked_ms:.1f} ms; "
            f"job {status}"
        )
        verdicts.append(("the idle polls are live (a job finishes)", status == "finished"))
        for job in (*polls, *beats):
            job.cancel()
        await asyncio.gather(*polls, *beats, return_exceptions=True)
    print()
    for target, met in verdicts:
        print(f"{target:<48} {'met' if met else 'NOT MET'}")
        failures += 0 if met else 1
    return 1 if failures else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.idle_workers")
    parser.add_argument("--workers", type=int, default=1000)
    parser.add_argument("--hold", type=float, default=15.0, help="seconds to wait before measuring")
    parser.add_argument(
        "--heartbeat", type=float, default=5.0, help="seconds between heartbeats (0: none)"
    )
    parser.add_argument("--register-batch", type=int, default=10, help="registrations at once")
    args = parser.parse_args(argv)
    print(f"machine: {machine_summary()}")
    redis = RedisServer()
    try:
        redis.start()
        with tempfile.TemporaryDirectory(prefix="interlock-bench-") as tmp:
            workdir = Path(tmp)
            blueprints = write_blueprints(workdir / "blueprints")
            env = {"WORKER_POLL_MAX_SECONDS": str(POLL_S)}
            with serve(workdir, redis.url, blueprints, env) as server:
                return asyncio.run(
                    _main(
                        server, redis, args.workers, args.hold, args.heartbeat, args.register_batch
                    )
                )
    finally:
        redis.stop()


if __name__ == "__main__":
    sys.exit(main())
