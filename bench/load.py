"""The load generator: N jobs over REST, C in flight, each waited for with `?wait=` or
(`complete="webhook"`) by its webhook, POSTed to a receiver in this process."""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web

from bench.harness import CLIENT_TOKEN, WEBHOOK_SECRET
from engine.runtime.webhooks import verify
from engine.store.keys import Keys

TERMINAL = frozenset({"finished", "failed", "cancelled"})
WAIT_S = 30  # each GET /api/v1/jobs/{id}?wait= holds this long at most
JOB_DEADLINE_S = 120.0  # a job not terminal by then is counted as "timed_out"

Payload = Callable[[int], dict[str, Any]]


@dataclass
class LoadResult:
    n: int
    concurrency: int
    wall_s: float = 0.0
    latencies_ms: list[float] = field(default_factory=list)  # finished jobs only
    job_ids: list[str] = field(default_factory=list)  # of latencies_ms, in the same order
    outcomes: Counter[str] = field(default_factory=Counter)  # finished, failed, ..., errors
    examples: list[str] = field(default_factory=list)  # a few problems, for the report

    @property
    def finished(self) -> int:
        return self.outcomes["finished"]

    @property
    def not_finished(self) -> int:
        return self.n - self.finished

    @property
    def jobs_per_s(self) -> float:
        return self.n / self.wall_s if self.wall_s > 0 else 0.0

    def percentile(self, p: float) -> float:
        """The p-th percentile (nearest rank) of the finished jobs' latencies, in ms."""
        return percentile(self.latencies_ms, p)

    def by_partition(self, partitions: int) -> dict[int, list[float]]:
        """Finished jobs' latencies grouped by the store partition of their id."""
        keys = Keys("il", partitions)
        groups: dict[int, list[float]] = {p: [] for p in range(partitions)}
        for job_id, latency in zip(self.job_ids, self.latencies_ms, strict=True):
            groups[keys.partition(job_id)].append(latency)
        return groups

    def problem(self, outcome: str, detail: str) -> None:
        self.outcomes[outcome] += 1
        if len(self.examples) < 5:
            self.examples.append(f"{outcome}: {detail}")


def percentile(values: list[float], p: float) -> float:
    """The p-th percentile of `values` by nearest rank; NaN when there are none."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), math.ceil(p / 100 * len(ordered))))
    return ordered[rank - 1]


def session(concurrency: int) -> aiohttp.ClientSession:
    connector = aiohttp.TCPConnector(limit=max(concurrency * 2, 10), force_close=False)
    return aiohttp.ClientSession(
        connector=connector,
        headers={"X-Client-Token": CLIENT_TOKEN, "Content-Type": "application/json"},
        timeout=aiohttp.ClientTimeout(total=WAIT_S + 30),
    )


class Receiver:
    """Webhooks POSTed back to the bench: each checked for its signature and answered 204;
    a job's first one ends the wait for it."""

    def __init__(self) -> None:
        self.arrived: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self.forged = 0

    def first(self, job_id: str) -> asyncio.Future[dict[str, Any]]:
        found = self.arrived.get(job_id)
        if found is None:
            found = self.arrived[job_id] = asyncio.get_running_loop().create_future()
        return found

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        if not verify(WEBHOOK_SECRET, request.headers.get("X-Interlock-Signature", ""), body):
            self.forged += 1
            return web.Response(status=401)
        payload = json.loads(body)
        arrived = self.first(payload["job_id"])
        if not arrived.done():  # (at least once: a second delivery is answered and dropped)
            arrived.set_result(payload)
        return web.Response(status=204)


@contextlib.asynccontextmanager
async def receiving() -> AsyncIterator[tuple[str, Receiver]]:
    """A webhook receiver on a free loopback port: its URL, and what it received."""
    receiver = Receiver()
    app = web.Application()
    app.router.add_post("/hook", receiver.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}/hook", receiver
    finally:
        await runner.cleanup()


async def _one_job(
    http: aiohttp.ClientSession,
    base: str,
    endpoint: str,
    body: bytes,
    result: LoadResult,
    receiver: Receiver | None = None,
) -> None:
    started = time.perf_counter()
    async with http.post(f"{base}/api/v1/{endpoint}", data=body) as resp:
        text = await resp.read()
        if resp.status != 202:
            result.problem("submit_refused", f"HTTP {resp.status} {text[:200]!r}")
            return
    job_id = json.loads(text)["job_id"]
    if receiver is not None:
        try:
            async with asyncio.timeout(JOB_DEADLINE_S):
                doc = await receiver.first(job_id)
        except TimeoutError:
            result.problem("timed_out", f"no webhook for {job_id} after {JOB_DEADLINE_S:g} s")
            return
        _count(result, job_id, doc, started)
        return
    url = f"{base}/api/v1/jobs/{job_id}"
    while True:
        async with http.get(url, params={"wait": str(WAIT_S)}) as resp:
            text = await resp.read()
            if resp.status != 200:
                result.problem("read_refused", f"{job_id}: HTTP {resp.status} {text[:200]!r}")
                return
        doc = json.loads(text)
        status = doc["status"]
        if status in TERMINAL:
            break
        if time.perf_counter() - started > JOB_DEADLINE_S:
            result.problem("timed_out", f"{job_id} still {status} after {JOB_DEADLINE_S:g} s")
            return
    _count(result, job_id, doc, started)


def _count(result: LoadResult, job_id: str, doc: dict[str, Any], started: float) -> None:
    status = doc["status"]
    if status == "finished":
        result.outcomes["finished"] += 1
        result.latencies_ms.append((time.perf_counter() - started) * 1000)
        result.job_ids.append(job_id)
    else:
        result.problem(status, f"{job_id}: {json.dumps(doc.get('error'))[:200]}")


One = Callable[[aiohttp.ClientSession, int], Awaitable[None]]


async def lanes(result: LoadResult, one: One) -> LoadResult:
    """Call `one(http, i)` for i in 0..n-1, `result.concurrency` at a time, on one session;
    a client error is counted in `result` and the lane goes on. Sets `result.wall_s`."""
    n = result.n
    next_index = 0

    async def lane(http: aiohttp.ClientSession) -> None:
        nonlocal next_index
        while next_index < n:
            index = next_index
            next_index += 1
            try:
                await one(http, index)
            except (aiohttp.ClientError, TimeoutError, ValueError, KeyError) as exc:
                result.problem("client_error", f"{type(exc).__name__}: {exc}")

    async with session(result.concurrency) as http:
        started = time.perf_counter()
        await asyncio.gather(*(lane(http) for _ in range(min(result.concurrency, n))))
        result.wall_s = time.perf_counter() - started
    return result


COMPLETIONS = ("wait", "webhook")


async def run_load(
    base: str, endpoint: str, n: int, concurrency: int, payload: Payload, complete: str = "wait"
) -> LoadResult:
    """Submit `n` jobs, at most `concurrency` in flight, and wait for each to end: with
    `GET ?wait=`, or (`complete="webhook"`) for its webhook (the server must allow loopback
    receivers: WEBHOOK_ALLOW=127.0.0.1, as bench.harness.serve sets)."""
    if complete not in COMPLETIONS:
        raise ValueError(f"complete: {complete!r} is not one of {COMPLETIONS}")
    result = LoadResult(n=n, concurrency=concurrency)
    async with contextlib.AsyncExitStack() as stack:
        receiver = hook = None
        if complete == "webhook":
            hook, receiver = await stack.enter_async_context(receiving())
        extra = {"webhook_url": hook} if hook else {}
        # Encoded before the clock starts.
        bodies = [json.dumps({**payload(i), **extra}).encode() for i in range(n)]

        async def one(http: aiohttp.ClientSession, i: int) -> None:
            await _one_job(http, base, endpoint, bodies[i], result, receiver)

        await lanes(result, one)
        if receiver is not None and receiver.forged:
            result.problem("bad_signature", f"{receiver.forged} webhook(s) failed verification")
    return result


async def submit_only(
    base: str, endpoint: str, n: int, concurrency: int, payload: Payload
) -> LoadResult:
    """Submit `n` jobs, at most `concurrency` requests in flight, without waiting for them:
    `finished` counts the accepted submissions, `job_ids` holds their ids."""
    result = LoadResult(n=n, concurrency=concurrency)

    async def one(http: aiohttp.ClientSession, i: int) -> None:
        body = json.dumps(payload(i)).encode()
        async with http.post(f"{base}/api/v1/{endpoint}", data=body) as resp:
            text = await resp.read()
            if resp.status != 202:
                result.problem("submit_refused", f"HTTP {resp.status} {text[:200]!r}")
                return
        result.outcomes["finished"] += 1
        result.job_ids.append(json.loads(text)["job_id"])

    return await lanes(result, one)


async def hammer(url: str, n: int, concurrency: int) -> LoadResult:
    """`n` GETs of `url`, `concurrency` in flight, with the session the job load uses:
    the same client for the hello-world floor as for Interlock."""
    result = LoadResult(n=n, concurrency=concurrency)

    async def one(http: aiohttp.ClientSession, i: int) -> None:
        async with http.get(url) as resp:
            await resp.read()
            result.outcomes["finished" if resp.status == 200 else f"http_{resp.status}"] += 1

    return await lanes(result, one)
