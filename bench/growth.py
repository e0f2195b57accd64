"""How the cost of a job grows with its work, and the floor under it (issue 18).

    .venv/bin/python -m bench.run --workload growth [--quick] [--budget S] [--backlog N]

Five sections, each on fresh processes (redis-server, `interlock serve`, echo workers; the
harness of bench.run), printed as they run:

* **floor**: aiohttp's hello world (bench/hello.py, same event loop) driven by the load
  client that drives Interlock: requests/s. Then linear3 on Interlock: jobs/s and the HTTP
  requests the orchestrator answered per job (its own `interlock_http_requests_total`, all
  routes: submit, waits, polls, results, heartbeats). The floor for linear3 is
  hello-world requests/s / requests per job; linear3's jobs/s is reported as a share of it.
* **width**: one `parallel` `for_each` job over N items (task `echo`, 4 workers), N from
  10 to 100,000: time to the joined result, orchestrator CPU and Redis commands per branch,
  the orchestrator's RSS, and whether the joined result counts N.
* **states**: blueprints of 1, 10 and 50 sequential task states: Redis commands and
  orchestrator CPU per job and per task state.
* **payload**: linear3 with `initial_data` of 1 KB, 100 KB and 1 MB: jobs/s, latency,
  orchestrator CPU per job and peak RSS (fresh processes per size).
* **backlog**: N linear3 jobs submitted with no worker running, then 4 workers started:
  the drain rate and Redis bytes per finished job (INFO memory, after minus before).

Every point has a time budget (`--budget`): a point past it prints "did not finish in N s"
and the larger points of its section are not run. `--quick` runs small sizes only. Figures
from a shared machine move with its load; quote ratios from the same run.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from bench.blueprints import ENDPOINTS, write_blueprints, write_chains
from bench.harness import (
    ROOT,
    RedisServer,
    Server,
    WorkerProcess,
    command_calls,
    cpu_seconds,
    echo_workers,
    peak_rss_mib,
    rss_mib,
    serve,
)
from bench.load import LoadResult, Payload, hammer, run_load, session, submit_only
from tests.support.redis_server import free_port

T = TypeVar("T")
TERMINAL = frozenset({"finished", "failed", "cancelled"})
WORKERS = 4
CONCURRENCY = 50
CARRY_STATES = 3  # the payload section's carry row: initial_data passed on by 3 task states
SETTINGS = {"MAX_BODY_BYTES": str(4 << 20)}  # room for a 1 MB initial_data and wide lists


@dataclass(frozen=True)
class Sizes:
    """What one run measures; `--quick` picks the small set."""

    hello_requests: int
    linear3_jobs: int
    warmup: int  # jobs before a measured window
    widths: tuple[int, ...]
    width_jobs: int  # jobs per width, at most (and at most 1,000 branches in all)
    states: tuple[tuple[int, int], ...]  # (task states, jobs)
    payloads: tuple[tuple[int, int], ...]  # (initial_data bytes, jobs)
    carry: tuple[int, int]  # (bytes, jobs) passed on through CARRY_STATES task states
    backlog: int
    budget_s: float


FULL = Sizes(
    hello_requests=20_000,
    linear3_jobs=2000,
    warmup=100,
    widths=(10, 100, 1000, 10_000, 100_000),
    width_jobs=5,
    states=((1, 1000), (10, 200), (50, 40)),
    payloads=((1_000, 1000), (100_000, 300), (1_000_000, 100)),
    carry=(1_000_000, 100),
    backlog=100_000,
    budget_s=180.0,
)
QUICK = Sizes(
    hello_requests=1000,
    linear3_jobs=100,
    warmup=10,
    widths=(10, 100),
    width_jobs=1,
    states=((1, 30), (10, 10)),
    payloads=((1_000, 30), (100_000, 10)),
    carry=(100_000, 10),
    backlog=200,
    budget_s=30.0,
)


# -- processes ---------------------------------------------------------------------------------


@dataclass
class Stack:
    redis: RedisServer
    server: Server
    workers: list[WorkerProcess]


@contextlib.contextmanager
def stack(workdir: Path, workers: int = WORKERS) -> Iterator[Stack]:
    """A fresh redis-server, `interlock serve` with the bench blueprints, and echo workers."""
    redis = RedisServer()
    redis.start()
    try:
        with (
            serve(workdir, redis.url, workdir / "blueprints", SETTINGS) as server,
            echo_workers(workdir, server.url, workers) as running,
        ):
            yield Stack(redis, server, running)
    finally:
        redis.stop()


@contextlib.contextmanager
def hello_server(workdir: Path) -> Iterator[tuple[str, int]]:
    """bench/hello.py on a free port: (its URL, its pid)."""
    port = free_port()
    log = workdir / "hello.log"
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", "bench.hello", str(port)],
            cwd=ROOT,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    try:
        url = f"http://127.0.0.1:{port}/"
        deadline = time.monotonic() + 30
        while True:  # ready when it answers
            try:
                asyncio.run(_get(url))
                break
            except OSError as exc:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"bench.hello did not start: {log.read_text()}") from exc
                time.sleep(0.1)
        yield url, process.pid
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


async def _get(url: str) -> None:
    async with aiohttp.ClientSession() as http, http.get(url) as resp:
        await resp.read()


# -- measuring ---------------------------------------------------------------------------------


@dataclass
class Window:
    """The orchestrator's CPU seconds, the Redis commands, and the bytes Redis read from its
    clients (what was written, and the commands around it) during one measured window."""

    wall_s: float = 0.0
    cpu_s: float = 0.0
    commands: int = 0
    received: int = 0


async def measured(st: Stack, work: Awaitable[T], budget_s: float) -> tuple[T | None, Window]:
    """Run `work` within `budget_s`; None when it did not finish in time."""
    client = st.redis.client()
    try:
        before_calls = sum((await command_calls(client)).values())
        before_received = await _net_input(client)
        before_cpu = cpu_seconds(st.server.pid)
        started = time.perf_counter()
        result: T | None = None
        try:
            async with asyncio.timeout(budget_s):
                result = await work
        except TimeoutError:
            result = None
        window = Window(wall_s=time.perf_counter() - started)
        window.cpu_s = cpu_seconds(st.server.pid) - before_cpu
        window.commands = sum((await command_calls(client)).values()) - before_calls - 1
        window.received = await _net_input(client) - before_received
    finally:
        await client.aclose()
    return result, window


async def _net_input(client: Any) -> int:
    """INFO stats total_net_input_bytes: what Redis has read from its clients so far."""
    return int((await client.info("stats"))["total_net_input_bytes"])


async def scrape(server: Server) -> dict[str, float]:
    """The orchestrator's /metrics: sample name -> value summed over labels."""
    async with aiohttp.ClientSession() as http, http.get(f"{server.url}/metrics") as resp:
        text = await resp.text()
    totals: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            totals[sample.name] = totals.get(sample.name, 0.0) + sample.value
    return totals


UNAVAILABLE = "_unavailable"  # in a view from one_job: how many 503 answers it retried


async def one_job(base: str, endpoint: str, data: dict[str, Any]) -> dict[str, Any]:
    """Submit one job and wait for it to end; its last view. A 503 (the store unavailable,
    "retry later") is retried after half a second, as a client should, and counted in the
    view under UNAVAILABLE; any other refusal ends the wait."""
    unavailable = 0

    async def call(method: str, url: str, **kwargs: Any) -> tuple[int, dict[str, Any]]:
        nonlocal unavailable
        while True:
            async with http.request(method, url, **kwargs) as resp:
                answer: dict[str, Any] = await resp.json()
            if resp.status != 503:
                return resp.status, answer
            unavailable += 1
            await asyncio.sleep(0.5)

    async with session(1) as http:
        body = json.dumps({"initial_data": data}).encode()
        status, answer = await call("POST", f"{base}/api/v1/{endpoint}", data=body)
        if status != 202:
            return {"status": f"refused HTTP {status}", "error": answer, UNAVAILABLE: unavailable}
        url = f"{base}/api/v1/jobs/{answer['job_id']}"
        while True:
            status, view = await call("GET", url, params={"wait": "30"})
            if status != 200 or view.get("status") in TERMINAL:
                return {**view, UNAVAILABLE: unavailable}


def _numbered(i: int) -> dict[str, Any]:
    return {"initial_data": {"n": i}}


def _padded(size: int) -> Callable[[int], dict[str, Any]]:
    pad = "x" * max(0, size - 20)  # the JSON of {"n":i,"pad":""} is about 20 bytes

    def payload(i: int) -> dict[str, Any]:
        return {"initial_data": {"n": i, "pad": pad}}

    return payload


def _size(n: int) -> str:
    return f"{n // 1_000_000} MB" if n >= 1_000_000 else f"{n // 1000} KB"


def _rate(count: float, seconds: float) -> float:
    return count / seconds if seconds > 0 else 0.0


# -- sections ----------------------------------------------------------------------------------


class Growth:
    """Runs the sections, printing as it goes; `failed` counts jobs that ended otherwise than
    `finished` (a point past its budget is a figure, not a failure)."""

    def __init__(self, sizes: Sizes, workdir: Path) -> None:
        self.sizes = sizes
        self.workdir = workdir
        self.failed = 0
        self.chains = write_chains(workdir / "blueprints", [s for s, _ in sizes.states])
        self.carry = write_chains(workdir / "blueprints", [CARRY_STATES], carry=True)
        write_blueprints(workdir / "blueprints")

    def late(self) -> str:
        return f"did not finish in {self.sizes.budget_s:g} s"

    def jobs(
        self,
        st: Stack,
        endpoint: str,
        n: int,
        payload: Payload,
        scraped: dict[str, float] | None = None,
    ) -> tuple[LoadResult | None, Window]:
        """A warm-up, then `n` jobs at C=50 measured within the budget. `scraped` (if given)
        is refreshed from /metrics just before the measured window."""
        url = st.server.url
        asyncio.run(run_load(url, endpoint, self.sizes.warmup, CONCURRENCY, payload))
        if scraped is not None:
            scraped.update(asyncio.run(scrape(st.server)))
        load = run_load(url, endpoint, n, CONCURRENCY, payload)
        return asyncio.run(measured(st, load, self.sizes.budget_s))

    def count(self, load: LoadResult) -> None:
        self.failed += load.not_finished
        if load.examples:
            print(f"    problems, first few: {load.examples}")

    def floor(self) -> None:
        s = self.sizes
        print("\n== floor: aiohttp hello world vs linear3, same load client, same run")
        with hello_server(self.workdir) as (url, pid):
            asyncio.run(hammer(url, min(500, s.hello_requests), CONCURRENCY))  # warm-up
            before = cpu_seconds(pid)
            hello = asyncio.run(hammer(url, s.hello_requests, CONCURRENCY))
            hello_cpu = cpu_seconds(pid) - before
        us = 1e6 * hello_cpu / s.hello_requests
        print(
            f"  hello world   GET /  N={s.hello_requests} C={CONCURRENCY}  "
            f"{hello.jobs_per_s:8.0f} requests/s  server CPU {us:.0f} us/request  "
            f"failed {hello.not_finished}"
        )
        endpoint = ENDPOINTS["bench_linear3"]
        with stack(self.workdir) as st:
            before_http: dict[str, float] = {}
            load, window = self.jobs(st, endpoint, s.linear3_jobs, _numbered, before_http)
            after_http = asyncio.run(scrape(st.server))
        if load is None:
            print(f"  linear3       {self.late()}")
            return
        self.count(load)
        name = "interlock_http_requests_total"
        requests = after_http.get(name, 0.0) - before_http.get(name, 0.0) - 1  # less 1 scrape
        per_job = requests / s.linear3_jobs
        print(
            f"  linear3       N={s.linear3_jobs} C={CONCURRENCY} W={WORKERS}  "
            f"{load.jobs_per_s:8.0f} jobs/s      orchestrator CPU "
            f"{1000 * window.cpu_s / s.linear3_jobs:.2f} ms/job  "
            f"{requests / window.wall_s:.0f} requests/s  {per_job:.2f} HTTP requests/job"
        )
        limit = _rate(hello.jobs_per_s, per_job)
        share = _rate(load.jobs_per_s, limit)
        print(
            f"  floor for linear3 = {hello.jobs_per_s:.0f} requests/s / {per_job:.2f} requests "
            f"a job = {limit:.0f} jobs/s; linear3 at {100 * share:.1f}% of the floor"
        )

    def width(self) -> None:
        s = self.sizes
        print(f"\n== width: one parallel for_each over N items, task echo, {WORKERS} workers")
        print(
            f"  {'N':>7} {'jobs':>4} {'p50 s':>8} {'CPU ms/branch':>13} {'cmds/branch':>11} "
            f"{'RSS MiB':>8} joined result"
        )
        endpoint = ENDPOINTS["bench_fanout"]
        with stack(self.workdir) as st:
            asyncio.run(one_job(st.server.url, endpoint, {"items": [0, 1]}))  # warm-up
            for i, width in enumerate(s.widths):
                jobs = max(1, min(s.width_jobs, 1000 // width))
                items = list(range(width))

                async def run(items: list[int] = items, jobs: int = jobs) -> list[Any]:
                    out = []
                    for _ in range(jobs):
                        started = time.perf_counter()
                        view = await one_job(st.server.url, endpoint, {"items": items})
                        out.append((time.perf_counter() - started, view))
                    return out

                views, window = asyncio.run(measured(st, run(), s.budget_s))
                if views is None:
                    print(f"  {width:>7} {jobs:>4} {self.late()}")
                    for larger in s.widths[i + 1 :]:
                        print(f"  {larger:>7}      not run: N={width} did not finish")
                    return
                seconds = sorted(t for t, _ in views)
                bad = [v for _, v in views if v.get("status") != "finished"]
                self.failed += len(bad)
                counts = {(v.get("result") or {}).get("count") for _, v in views}
                joined = f"count {counts.pop()}" if len(counts) == 1 else f"counts {counts}"
                if bad:
                    joined = f"{len(bad)} not finished: {str(bad[0])[:120]}"
                retried = sum(v.get(UNAVAILABLE, 0) for _, v in views)
                if retried:
                    joined += f" ({retried} answers 503 store_unavailable, retried)"
                branches = width * jobs
                print(
                    f"  {width:>7} {jobs:>4} {seconds[len(seconds) // 2]:>8.3f} "
                    f"{1000 * window.cpu_s / branches:>13.3f} {window.commands / branches:>11.2f} "
                    f"{rss_mib(st.server.pid):>8.0f} {joined}",
                    flush=True,
                )
                if bad:
                    for larger in s.widths[i + 1 :]:
                        print(f"  {larger:>7}      not run: N={width} did not finish")
                    return

    def states(self) -> None:
        s = self.sizes
        print(f"\n== states: K sequential echo task states, C={CONCURRENCY}, {WORKERS} workers")
        print(
            f"  {'K':>3} {'jobs':>5} {'jobs/s':>7} {'cmds/job':>9} {'cmds/state':>10} "
            f"{'CPU ms/job':>10} {'CPU ms/state':>12}"
        )
        with stack(self.workdir) as st:
            for states, jobs in s.states:
                load, window = self.jobs(st, self.chains[states], jobs, _numbered)
                if load is None:
                    print(f"  {states:>3} {jobs:>5} {self.late()}")
                    return
                self.count(load)
                cmds, cpu_ms = window.commands / jobs, 1000 * window.cpu_s / jobs
                print(
                    f"  {states:>3} {jobs:>5} {load.jobs_per_s:>7.0f} {cmds:>9.1f} "
                    f"{cmds / states:>10.2f} {cpu_ms:>10.2f} {cpu_ms / states:>12.3f}",
                    flush=True,
                )

    def payload(self) -> None:
        s = self.sizes
        print(
            f"\n== payload: linear3 with initial_data of B bytes, C={CONCURRENCY}, fresh processes"
            f" (`carry`: passed on through {CARRY_STATES} task states)"
        )
        print(
            f"  {'B':>6} {'jobs':>5} {'jobs/s':>7} {'p50 ms':>8} {'CPU ms/job':>10} "
            f"{'cmds/job':>8} {'peak RSS MiB':>12}"
        )
        received = []
        rows = [(_size(size), ENDPOINTS["bench_linear3"], size, jobs) for size, jobs in s.payloads]
        size, jobs = s.carry
        rows.append((f"{_size(size)} carry", self.carry[CARRY_STATES], size, jobs))
        late = False
        for label, endpoint, size, jobs in rows:
            if late:
                print(f"  {label:>6} {jobs:>5} not run: a smaller point did not finish")
                continue
            with stack(self.workdir) as st:
                load, window = self.jobs(st, endpoint, jobs, _padded(size))
                peak = peak_rss_mib(st.server.pid)
            if load is None:
                print(f"  {label:>6} {jobs:>5} {self.late()}")
                late = True
                continue
            self.count(load)
            print(
                f"  {label:>6} {jobs:>5} {load.jobs_per_s:>7.0f} {load.percentile(50):>8.1f} "
                f"{1000 * window.cpu_s / jobs:>10.2f} {window.commands / jobs:>8.1f} {peak:>12.0f}",
                flush=True,
            )
            received.append(f"{label}: {window.received / jobs / 1000:.0f} KB")
        print(
            f"  bytes Redis read per job (INFO stats total_net_input_bytes): {', '.join(received)}"
        )

    def backlog(self) -> None:
        s = self.sizes
        n = s.backlog
        print(f"\n== backlog: {n} linear3 jobs queued with no worker, then {WORKERS} workers")
        endpoint = ENDPOINTS["bench_linear3"]
        with stack(self.workdir, workers=0) as st:
            memory_before = asyncio.run(_used_memory(st.redis))
            submitted, window = asyncio.run(
                measured(
                    st,
                    submit_only(st.server.url, endpoint, n, CONCURRENCY, _numbered),
                    s.budget_s,
                )
            )
            if submitted is None:
                print(f"  submitting: {self.late()}")
                return
            self.count(submitted)
            queued = asyncio.run(_used_memory(st.redis)) - memory_before
            print(
                f"  submitted {submitted.finished} in {window.wall_s:.1f} s "
                f"({submitted.jobs_per_s:.0f} jobs/s); Redis +{queued / 2**20:.1f} MiB, "
                f"{queued / max(1, submitted.finished) / 1024:.2f} KiB per queued job"
            )
            with echo_workers(self.workdir, st.server.url, WORKERS):
                drain, window = asyncio.run(
                    measured(st, _drain(st.server, submitted.finished), s.budget_s)
                )
            if drain is None:
                print(f"  draining: {self.late()}")
                return
            finished = drain.ends.get("finished", 0)
            self.failed += submitted.finished - int(finished)
            grown = asyncio.run(_used_memory(st.redis)) - memory_before
            others = {k: v for k, v in drain.ends.items() if k != "finished"}
            print(
                f"  drained {finished:.0f} (other ends: {others or 'none'}) in "
                f"{drain.seconds:.1f} s from the first job ended: {drain.rate:.0f} jobs/s; "
                f"{window.commands / max(1, finished):.1f} Redis cmds and "
                f"{1000 * window.cpu_s / max(1, finished):.2f} orchestrator CPU ms per job"
            )
            print(
                f"  Redis bytes per finished job: {grown / max(1, finished) / 1024:.2f} KiB "
                f"(+{grown / 2**20:.1f} MiB in all)"
            )


async def _used_memory(redis: RedisServer) -> int:
    client = redis.client()
    try:
        return int((await client.info("memory"))["used_memory"])
    finally:
        await client.aclose()


@dataclass(frozen=True)
class Drain:
    ends: dict[str, float]  # jobs ended, by status
    seconds: float  # from the first job ended to the last (the workers' start-up left out)
    rate: float  # jobs ended in that time, per second


async def _ends(server: Server) -> dict[str, float]:
    """The orchestrator's jobs_ended counter, by status."""
    ends: dict[str, float] = {}
    async with aiohttp.ClientSession() as http, http.get(f"{server.url}/metrics") as resp:
        text = await resp.text()
    for family in text_string_to_metric_families(text):
        if family.name == "interlock_jobs_ended":
            for sample in family.samples:
                if sample.name.endswith("_total"):
                    status = sample.labels["status"]
                    ends[status] = ends.get(status, 0.0) + sample.value
    return ends


async def _drain(server: Server, total: int) -> Drain:
    """Wait until the orchestrator has ended `total` jobs, reading its counter 10 times a
    second; the rate runs from the first reading that saw a job ended."""
    first: tuple[float, float] | None = None
    while True:
        ends = await _ends(server)
        now, done = time.perf_counter(), sum(ends.values())
        if first is None and done > 0:
            first = (now, done)
        if done >= total:
            start, before = first or (now, 0.0)
            seconds = now - start
            return Drain(ends, seconds, _rate(done - before, seconds))
        await asyncio.sleep(0.1)


SECTIONS: dict[str, Callable[[Growth], None]] = {
    "floor": Growth.floor,
    "width": Growth.width,
    "states": Growth.states,
    "payload": Growth.payload,
    "backlog": Growth.backlog,
}


def run(quick: bool, budget_s: float | None, backlog: int | None, sections: list[str]) -> int:
    sizes = QUICK if quick else FULL
    if budget_s is not None:
        sizes = replace(sizes, budget_s=budget_s)
    if backlog is not None:
        sizes = replace(sizes, backlog=backlog)
    print(
        f"growth ({'quick' if quick else 'full'}): budget {sizes.budget_s:g} s a point, "
        f"load average {' '.join(f'{x:.1f}' for x in os.getloadavg())}"
    )
    with tempfile.TemporaryDirectory(prefix="interlock-growth-") as tmp:
        growth = Growth(sizes, Path(tmp))
        for name in sections:
            SECTIONS[name](growth)
    print()
    if growth.failed:
        print(f"FAILED: {growth.failed} job(s) ended otherwise than finished")
        return 1
    print("every job that ran within its budget finished")
    return 0
