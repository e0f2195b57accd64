"""The partition layout: recorded by the first orchestrator, adopted or checked by the rest."""

from __future__ import annotations

import pytest
from redis.crc import key_slot

from engine.store.client import PartitionMismatch, Store
from engine.store.keys import CLUSTER_PARTITIONS, DEFAULT_PARTITIONS, Keys, spread_tags


async def test_a_new_store_records_the_default_and_later_ones_adopt_it(store_url: str) -> None:
    first = await Store.connect(store_url)
    try:
        assert first.keys == Keys("il", DEFAULT_PARTITIONS, spread=True)
        meta = await first.redis.hgetall("il:meta")
        assert {k: meta[k] for k in ("partitions", "tags")} == {"partitions": "8", "tags": "spread"}
        assert meta["deployment"] == first.marker  # the deployment marker, written with them
        if store_url.startswith("memory://"):
            return  # each memory:// store is its own
        second = await Store.connect(store_url)
        assert second.keys == first.keys
        await second.close()
    finally:
        await first.close()


async def test_a_count_that_differs_from_the_stored_one_is_refused(redis_url: str) -> None:
    store = await Store.connect(redis_url, partitions=16)
    await store.close()
    with pytest.raises(PartitionMismatch) as caught:
        await Store.connect(redis_url, partitions=8)
    assert "holds jobs in 16 partitions but REDIS_PARTITIONS is 8; use 16" in str(caught.value)
    adopted = await Store.connect(redis_url)  # REDIS_PARTITIONS unset: take what is there
    assert adopted.keys.partitions == 16
    await adopted.close()


async def test_a_store_set_up_before_the_tags_spread_keeps_its_plain_tags(redis_url: str) -> None:
    import redis

    with redis.Redis.from_url(redis_url) as client:
        client.hset("il:meta", "partitions", "8")  # as older versions recorded it
    store = await Store.connect(redis_url, partitions=8)
    try:
        assert store.keys.spread is False
        assert store.keys.timers(3) == "il:{p3}:timers"
    finally:
        await store.close()


@pytest.mark.parametrize("partitions", [1, 3, 8, 64, 1024])
def test_spread_tags_put_partition_n_in_the_nth_slot_range(partitions: int) -> None:
    tags = spread_tags(partitions)
    assert len(set(tags)) == partitions
    for n, tag in enumerate(tags):
        assert key_slot(tag.encode()) * partitions // 16384 == n
    keys = Keys("il", partitions)
    assert keys.timers(0).startswith(f"il:{{{tags[0]}}}")


def masters_of(partitions: int, masters: int) -> list[int]:
    """Partitions per master when the slots are split in equal ranges, as
    `redis-cli --cluster create` does."""
    counts = [0] * masters
    for tag in spread_tags(partitions):
        counts[min(masters - 1, key_slot(tag.encode()) * masters // 16384)] += 1
    return counts


def test_the_cluster_default_spreads_evenly_over_3_10_and_64_masters() -> None:
    assert sorted(masters_of(CLUSTER_PARTITIONS, 3)) == [21, 21, 22]
    assert set(masters_of(CLUSTER_PARTITIONS, 10)) == {6, 7}
    assert set(masters_of(CLUSTER_PARTITIONS, 64)) == {1}
