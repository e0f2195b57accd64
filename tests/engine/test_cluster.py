"""The store on a real Redis Cluster: start-up checks, one pipeline per node, shard channels."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from redis.asyncio.cluster import RedisCluster as AsyncCluster

from engine.store.client import Commit, Store, StoreConfigError
from engine.store.keys import Keys
from tests.conftest import require_program
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


async def test_notifications_arrive_over_shard_channels(cluster_url: str) -> None:
    """Given a subscriber, when jobs of every partition end, then it hears of each one."""
    store = await Store.connect(cluster_url, partitions=16)
    keys = Keys(partitions=16)
    heard: set[str] = set()
    ids = [f"n-{i}" for i in range(40)]
    subscribed = asyncio.Event()

    async def listen() -> None:
        async for item in store.notifications():
            subscribed.set()
            if item is not None and item[0] == "done":
                heard.update(item[1].split())
                if heard >= set(ids):
                    return

    try:
        listener = asyncio.create_task(listen())
        async with asyncio.timeout(20):
            await subscribed.wait()  # the first idle tick comes after subscribing
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
