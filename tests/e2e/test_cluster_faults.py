"""Redis Cluster faults under load: a failover, a SIGKILLed master, slots that move while jobs
run, and an orchestrator SIGKILLed. Every accepted job must end, and end exactly once."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.e2e.test_jobs_over_http import RETRY, _folder
from tests.support.processes import CLIENT_TOKEN, serve, worker
from tests.support.redis_cluster import RedisCluster

pytestmark = pytest.mark.timeout(180)

TERMINAL = ("finished", "failed", "cancelled")


class Load:
    """Submits jobs one after the other to the given servers, in turn, until stopped. A job
    counts as accepted on a 202 only: a 503 during a fault is a refusal the client sees (it
    would submit again), and the job it may have created is not counted."""

    def __init__(self, urls: list[str]) -> None:
        self.urls = list(urls)
        self.accepted: list[str] = []
        self.refused = 0
        self.stop = asyncio.Event()

    async def run(self, http: aiohttp.ClientSession) -> None:
        i = 0
        while not self.stop.is_set():
            url = self.urls[i % len(self.urls)]
            i += 1
            try:
                async with http.post(
                    f"{url}/api/v1/jobs/retry_fast", json={"initial_data": {"i": i}}
                ) as resp:
                    if resp.status == 202:
                        self.accepted.append((await resp.json())["job_id"])
                    else:
                        self.refused += 1
            except aiohttp.ClientError:
                self.refused += 1  # that server is gone: the client tries the next one
                await asyncio.sleep(0.01)

    async def until(self, count: int, within_s: float = 30) -> None:
        """Wait until `count` more jobs have been accepted (the load is flowing)."""
        target = len(self.accepted) + count
        deadline = time.monotonic() + within_s
        while len(self.accepted) < target:
            assert time.monotonic() < deadline, f"only {len(self.accepted)} jobs accepted"
            await asyncio.sleep(0.02)


@contextlib.asynccontextmanager
async def running(load: Load) -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(headers={"X-Client-Token": CLIENT_TOKEN}) as http:
        task = asyncio.create_task(load.run(http))
        try:
            yield http
        finally:
            load.stop.set()
            await task


async def get(http: aiohttp.ClientSession, url: str, within_s: float = 60) -> Any:
    """GET, retried while the store answers 503 (a failover still under way)."""
    deadline = time.monotonic() + within_s
    while True:
        async with http.get(url) as resp:
            if resp.status == 200:
                return await resp.json()
            assert resp.status == 503, (resp.status, url)
            assert time.monotonic() < deadline, f"{url} answered 503 for {within_s} s"
        await asyncio.sleep(0.1)


async def every_job_ends_once(http: aiohttp.ClientSession, base: str, jobs: list[str]) -> None:
    async def ended(job_id: str) -> None:
        deadline = time.monotonic() + 60
        while True:
            job = await get(http, f"{base}/api/v1/jobs/{job_id}?wait=5")
            if job["status"] in TERMINAL:
                break
            assert time.monotonic() < deadline, f"{job_id} is still {job['status']}"
        assert job["status"] == "finished", job
        events = [
            e["event"] for e in (await get(http, f"{base}/api/v1/jobs/{job_id}/history"))["events"]
        ]
        assert events.count("job_created") == 1, events
        assert events.count("job_finished") == 1, events

    await asyncio.gather(*(ended(job_id) for job_id in jobs))


async def in_thread(call: Callable[[], Any]) -> Any:
    return await asyncio.to_thread(call)


async def test_failover_and_resharding_under_load_with_an_orchestrator_killed(
    tmp_path: Path, cluster_url: str, redis_cluster: RedisCluster
) -> None:
    """Given two orchestrators on the cluster and a worker on each, while jobs keep coming:
    when a replica takes over with CLUSTER FAILOVER, 300 slots move to another master
    with `redis-cli --cluster reshard`, and then one orchestrator is SIGKILLed, then every
    accepted job finishes, and no job is created or finished twice."""
    folder = _folder(tmp_path, RETRY)
    env = {"HEARTBEAT_TIMEOUT": "1s"}
    with (
        serve(tmp_path, cluster_url, folder, env=env) as first,
        serve(tmp_path, cluster_url, folder, env=env) as second,
        worker(tmp_path, first.url, "w-first", "echo", "--slots", "8", "--delay", "0.02"),
        worker(tmp_path, second.url, "w-second", "echo", "--slots", "8", "--delay", "0.02"),
    ):
        load = Load([first.url, second.url])
        async with running(load):
            await load.until(10)
            masters = redis_cluster.masters()
            await in_thread(lambda: redis_cluster.failover(redis_cluster.replica_of(masters[0])))
            await load.until(10)
            masters = redis_cluster.masters()
            await in_thread(lambda: redis_cluster.reshard(masters[1], masters[2], 300))
            await load.until(10)
            # The moved slots ended the shard subscriptions: the orchestrators resubscribed.
            assert "resubscribing" in second.output()
            first.kill()
            load.urls = [second.url]
            await load.until(10)
        print(f"\n{len(load.accepted)} jobs accepted (all end once), {load.refused} refused")
        async with aiohttp.ClientSession(headers={"X-Client-Token": CLIENT_TOKEN}) as http:
            await every_job_ends_once(http, second.url, load.accepted)


async def test_a_sigkilled_master_loses_no_acknowledged_job_with_wait(
    tmp_path: Path, cluster_url: str, redis_cluster: RedisCluster
) -> None:
    """Given an orchestrator with REDIS_WAIT_REPLICAS=1 (every commit waits for one replica),
    when a master is SIGKILLed while jobs run and its replica is promoted, then every job
    the orchestrator accepted finishes exactly once. (The promoted master has no replica
    left, so its partitions refuse changes until the killed node is back as its replica:
    the price of waiting for a replica.)"""
    folder = _folder(tmp_path, RETRY)
    env = {"HEARTBEAT_TIMEOUT": "1s", "REDIS_WAIT_REPLICAS": "1", "REDIS_WAIT_TIMEOUT": "250ms"}
    with (
        serve(tmp_path, cluster_url, folder, env=env) as server,
        worker(tmp_path, server.url, "w-one", "echo", "--slots", "8", "--delay", "0.02"),
    ):
        load = Load([server.url])
        async with running(load):
            await load.until(15)
            victim = redis_cluster.masters()[0]
            await in_thread(lambda: redis_cluster.kill_master(victim))
            await in_thread(redis_cluster.heal)  # the killed node rejoins as a replica
            await load.until(15)
        print(f"\n{len(load.accepted)} jobs accepted (all end once), {load.refused} refused")
        async with aiohttp.ClientSession(headers={"X-Client-Token": CLIENT_TOKEN}) as http:
            await every_job_ends_once(http, server.url, load.accepted)
