"""The store on a real Redis Cluster: start-up checks, one pipeline per node, shard channels."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from redis.asyncio.cluster import ClusterNode
from redis.asyncio.cluster import RedisCluster as AsyncCluster

from engine.store.client import Commit, Store, StoreConfigError, StoreUnavailable
from engine.store.keys import Keys
from tests.conftest import ROOT, require_program
from tests.support.redis_cluster import RedisCluster, free_cluster_port
from tests.support.redis_server import RedisServer

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def lone_cluster_node() -> Iterator[RedisServer]:
    """A cluster-enabled redis-server that serves only half of the slots."""
    node = RedisServer(
        require_program("redis-server", "apt-get install redis-server"),
        ("--cluster-enabled", "yes"),
    )
    node.port = free_cluster_port()
    node.start()
    try:
        yield node
    finally:
        node.stop()


async def test_a_plain_url_naming_a_cluster_node_is_refused_with_the_url_to_use(
    cluster_url: str, redis_cluster: RedisCluster
) -> None:
    port = redis_cluster.masters()[0]
    with pytest.raises(StoreConfigError) as caught:
        await Store.connect(f"redis://127.0.0.1:{port}/0")
    message = str(caught.value)
    assert f"set REDIS_URL to redis+cluster://127.0.0.1:{port}" in message
    assert "cannot reach" not in message


async def test_a_cluster_without_full_slot_coverage_is_refused(
    lone_cluster_node: RedisServer,
) -> None:
    import redis

    with redis.Redis(port=lone_cluster_node.port) as node:
        node.execute_command("CLUSTER", "ADDSLOTSRANGE", "0", "8191")
    with pytest.raises(StoreConfigError) as caught:
        await Store.connect(f"redis+cluster://127.0.0.1:{lone_cluster_node.port}")
    assert "does not cover all 16384 hash slots" in str(caught.value)
    assert "redis-cli --cluster fix" in str(caught.value)


async def test_a_group_commit_runs_one_script_per_partition_on_its_master(
    cluster_url: str, redis_cluster: RedisCluster
) -> None:
    """Given a store on the cluster, when changes spanning every partition are committed
    together, then each partition costs one script call on its own master, and every job
    exists."""
    store = await Store.connect(cluster_url, partitions=16)
    try:
        keys = store.keys
        ids = []
        partitions_seen: set[int] = set()
        n = 0
        while len(partitions_seen) < keys.partitions:
            job_id = f"job-{n}"
            n += 1
            if keys.partition(job_id) not in partitions_seen:
                partitions_seen.add(keys.partition(job_id))
                ids.append(job_id)
        client: AsyncCluster = store.redis  # type: ignore[assignment]
        await client.config_resetstat(target_nodes=AsyncCluster.PRIMARIES)
        results = await asyncio.gather(
            *(
                store.commit(
                    Commit(job_id, None, {"v": "1", "doc": "{}"}, done=True), history_start=0
                )
                for job_id in ids
            )
        )
        assert all(results)
        stats = await client.info("commandstats", target_nodes=AsyncCluster.PRIMARIES)
        calls = {
            node: int(info.get("cmdstat_evalsha", {}).get("calls", 0))
            + int(info.get("cmdstat_eval", {}).get("calls", 0))
            for node, info in stats.items()
        }
        # One script per partition (not per job), and the partitions spread over every master.
        assert sum(calls.values()) == keys.partitions
        assert len([n for n in calls.values() if n]) == 3
        for job_id in ids:
            assert await store.exists(job_id)
    finally:
        await store.close()


async def test_the_default_partitions_spread_evenly_on_the_three_masters(cluster_url: str) -> None:
    """21/21/22 on a fresh cluster (test_partitions.py computes it for equal slot ranges);
    the session's cluster may have moved a few hundred slots in the fault tests since."""
    store = await Store.connect(cluster_url)
    try:
        client: AsyncCluster = store.redis  # type: ignore[assignment]
        owners: dict[str, int] = {}
        for partition in range(store.keys.partitions):
            node = client.get_node_from_key(store.keys.timers(partition))
            assert node is not None
            owners[node.name] = owners.get(node.name, 0) + 1
        assert len(owners) == 3
        assert min(owners.values()) >= 19
        assert max(owners.values()) <= 24
    finally:
        await store.close()


async def test_a_batch_of_commits_is_one_pipeline_per_master(
    cluster_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Given changes to jobs of all 64 partitions in one group commit, then the cluster
    client sends one pipeline to each of the three masters (not one per partition)."""
    store = await Store.connect(cluster_url)
    sent: list[str] = []
    original = ClusterNode.execute_pipeline

    async def counting(self: ClusterNode, commands: Any) -> bool:
        sent.append(self.name)
        return await original(self, commands)

    monkeypatch.setattr(ClusterNode, "execute_pipeline", counting)
    try:
        ids, seen = [], set()
        for n in range(10_000):
            if store.keys.partition(f"j{n}") not in seen:
                seen.add(store.keys.partition(f"j{n}"))
                ids.append(f"j{n}")
        batch = [(Commit(i, None, {"v": "1", "doc": "{}"}), 0) for i in ids]
        assert len(ids) == 64
        assert await store._commit_batch(batch) == [True] * 64
        assert len(sent) == 3
        assert len(set(sent)) == 3
    finally:
        await store.close()


async def test_notifications_arrive_over_shard_channels(cluster_url: str) -> None:
    """Given a subscriber, when jobs of every partition end, then it hears of each one, over
    one subscribed connection per master, each channel subscribed on its own master."""
    store = await Store.connect(cluster_url, partitions=16)
    keys = Keys(partitions=16)
    heard: set[str] = set()
    ids = [f"n-{i}" for i in range(40)]
    subscribed = asyncio.Event()

    async def listen() -> None:
        async for item in store.notifications():
            subscribed.set()
            if item is not None and item[0] == "done":
                heard.update(word.partition(":")[0] for word in item[1].split())
                if heard >= set(ids):
                    return

    try:
        listener = asyncio.create_task(listen())
        async with asyncio.timeout(20):
            await subscribed.wait()  # the first idle tick comes after subscribing
            client: AsyncCluster = store.redis  # type: ignore[assignment]
            for channel in keys.shard_channels():
                owner = client.get_node_from_key(channel)
                assert owner is not None
                counts = await client.execute_command(
                    "PUBSUB", "SHARDNUMSUB", channel, target_nodes=owner
                )
                assert counts == [channel, 1]
            listing: Any = await client.client_list(target_nodes=AsyncCluster.PRIMARIES)
            assert len(listing) == 3
            for clients in listing.values():
                subscribers = [c for c in clients if int(c.get("ssub", 0)) > 0]
                assert len(subscribers) == 1
            await asyncio.gather(
                *(
                    store.commit(
                        Commit(i, None, {"v": "1", "doc": "{}"}, done=True), history_start=0
                    )
                    for i in ids
                )
            )
            await listener
        assert {keys.partition(i) for i in ids} == set(range(16))
    finally:
        await store.close()


async def test_a_change_no_replica_acknowledged_is_a_failure(redis_url: str) -> None:
    """Given REDIS_WAIT_REPLICAS=1 on a Redis without replicas, when a job is created, then
    the commit fails as unavailable (a 503 at the API) instead of being acknowledged."""
    store = await Store.connect(redis_url, wait_replicas=1, wait_timeout_ms=50)
    try:
        with pytest.raises(StoreUnavailable) as caught:
            await store.commit(Commit("w-1", None, {"v": "1", "doc": "{}"}), history_start=0)
        assert "fewer than 1 replica(s) acknowledged within 50 ms" in str(caught.value)
    finally:
        await store.close()


def test_interlock_serve_on_a_cluster_node_exits_saying_which_url_to_use(
    cluster_url: str, redis_cluster: RedisCluster
) -> None:
    port = redis_cluster.masters()[0]
    done = subprocess.run(
        [sys.executable, "-m", "interlock_cli", "serve"],
        cwd=ROOT,
        env={**os.environ, "REDIS_URL": f"redis://127.0.0.1:{port}/0", "API_PORT": "0"},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 1, done.stdout + done.stderr
    output = done.stdout + done.stderr
    assert f"set REDIS_URL to redis+cluster://127.0.0.1:{port}" in output
    assert "cannot reach" not in output
