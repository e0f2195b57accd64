"""Item 6: nothing grows without bound. Expired jobs leave their client index; a filtered
listing reads a bounded number of entries; the recent-jobs memory is capped in bytes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

import engine.runtime.orchestrator
from engine.blueprint.loader import load_blueprints
from engine.runtime.janitor import IndexJanitor
from engine.runtime.orchestrator import Orchestrator
from engine.runtime.recent import RecentJobs
from engine.runtime.registry import Registry
from engine.store.client import Store
from server.app import orchestrator_settings, runtime_settings
from server.config import Settings
from tests.server.helpers import BLUEPRINTS


async def index_size(orch: Orchestrator, client: str) -> int:
    keys = orch.store.keys
    sizes = [
        await orch.store.redis.zcard(keys.client_jobs(p, client)) for p in range(keys.partitions)
    ]
    return sum(sizes)


async def submit_many(orch: Orchestrator, count: int, client: str = "acme") -> list[str]:
    blueprint = orch.registry.by_name["reminder"]
    return [await orch.submit(blueprint, {"user": "u"}, client=client) for _ in range(count)]


async def test_expired_jobs_leave_the_client_index(orchestrator: Orchestrator) -> None:
    # Given 150 jobs, 100 of which have reached the end of their retention (key expired)
    ids = await submit_many(orchestrator, 150)
    for job_id in ids[:100]:
        await orchestrator.store.redis.delete(orchestrator.store.keys.job(job_id))
    assert await index_size(orchestrator, "acme") == 150
    # When the janitor sweeps, with a budget smaller than an index
    janitor = IndexJanitor(orchestrator.store, budget=10)
    while await janitor.sweep(["acme", "globex"]):
        pass
    await janitor.sweep(["acme"])  # a round after the end starts over, finding nothing
    # Then only the live jobs remain indexed, and they are still listed
    assert await index_size(orchestrator, "acme") == 50
    jobs, _ = await orchestrator.list_jobs(
        "acme", status=None, blueprint=None, limit=200, cursor=None
    )
    assert sorted(doc["id"] for doc in jobs) == sorted(ids[100:])


async def test_a_filtered_listing_reads_a_bounded_number_of_entries(
    orchestrator: Orchestrator, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given 400 jobs of which none waits for a person (and a budget of 50 a request)
    monkeypatch.setattr(engine.runtime.orchestrator, "LIST_BUDGET", 50)
    await submit_many(orchestrator, 400)
    read: list[int] = []
    real = orchestrator.store.read_docs

    async def counting(job_ids: Any) -> Any:
        read.append(len(job_ids))
        return await real(job_ids)

    orchestrator.store.read_docs = counting  # type: ignore[method-assign]
    # When a client asks for one such job
    jobs, cursor = await orchestrator.list_jobs(
        "acme", status="waiting_for_human", blueprint=None, limit=1, cursor=None
    )
    # Then the request reads about LIST_BUDGET entries, not the whole history, and says
    # where to go on
    assert jobs == []
    assert cursor is not None
    assert sum(read) <= 50 + 50  # the budget, plus at most one batch of 50
    # and following the cursors walks everything, ending with no cursor
    pages = 1
    while cursor is not None:
        jobs, cursor = await orchestrator.list_jobs(
            "acme", status="waiting_for_human", blueprint=None, limit=1, cursor=cursor
        )
        assert jobs == []
        pages += 1
    assert sum(read) >= 400
    assert pages >= 4


async def expire(orch: Orchestrator, job_ids: list[str]) -> None:
    """The end of these jobs' retention: their hashes expire."""
    for job_id in job_ids:
        await orch.store.redis.delete(orch.store.keys.job(job_id))


async def indexed(orch: Orchestrator) -> set[str]:
    """Every client some partition's set of client names holds."""
    store = orch.store
    return {n for p in range(store.keys.partitions) for n in await store.indexed_clients(p)}


@pytest.fixture(params=["memory", "redis", "cluster"])
async def on_any_store(
    request: pytest.FixtureRequest, settings: Settings
) -> AsyncIterator[Orchestrator]:
    """An orchestrator (not started: no janitor of its own) on each kind of store."""
    url = (
        "memory://"
        if request.param == "memory"
        else request.getfixturevalue(f"{request.param}_url")
    )
    store = await Store.connect(url)
    registry = Registry(load_blueprints([BLUEPRINTS]), runtime_settings(settings))
    try:
        yield Orchestrator(store, registry, orchestrator_settings(settings))
    finally:
        await store.close()


async def test_an_unconfigured_clients_index_is_pruned_too(on_any_store: Orchestrator) -> None:
    orchestrator = on_any_store
    # Given jobs of a client no longer configured (and of the configured acme), all expired
    # but one of acme's
    old = await submit_many(orchestrator, 40, client="removed-client")
    acme = await submit_many(orchestrator, 3)
    await expire(orchestrator, old + acme[:2])
    assert await indexed(orchestrator) == {"removed-client", "acme"}
    # When the janitor sweeps, told of no client at all
    janitor = IndexJanitor(orchestrator.store, budget=10)
    while await janitor.sweep():
        pass
    # Then both indexes hold only live jobs, and the removed client is forgotten
    assert await index_size(orchestrator, "removed-client") == 0
    assert await index_size(orchestrator, "acme") == 1
    assert await indexed(orchestrator) == {"acme"}
    # and a job it submits later is indexed and found again
    again = await submit_many(orchestrator, 1, client="removed-client")
    assert await indexed(orchestrator) == {"removed-client", "acme"}
    await janitor.sweep()
    jobs, _ = await orchestrator.list_jobs(
        "removed-client", status=None, blueprint=None, limit=10, cursor=None
    )
    assert [doc["id"] for doc in jobs] == again


async def test_indexes_from_before_the_client_names_are_found_once(
    on_any_store: Orchestrator,
) -> None:
    orchestrator = on_any_store
    # Given an index written before the sets of client names existed
    store = orchestrator.store
    old = await submit_many(orchestrator, 5, client="old-client")
    for partition in range(store.keys.partitions):
        await store.redis.delete(store.keys.client_names(partition))
    await store.redis.hdel(store.keys.meta, "client_names")
    await expire(orchestrator, old)
    # When the orchestrator's janitor starts (this one serves no client by that name)
    janitor = IndexJanitor(store)
    swept = asyncio.Event()
    real_sweep = janitor.sweep

    async def sweep(clients: Any = ()) -> int:
        dropped = await real_sweep(clients)
        swept.set()
        return dropped

    janitor.sweep = sweep  # type: ignore[method-assign]
    running = asyncio.create_task(janitor.run(["acme"], first_s=0))
    try:
        async with asyncio.timeout(10):
            await swept.wait()  # its first round
    finally:
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)
    # Then the old index is found (by SCAN) and emptied, and the SCAN is not repeated
    assert await index_size(orchestrator, "old-client") == 0
    assert await indexed(orchestrator) == set()
    assert await store.register_old_client_indexes() == 0


def test_recent_jobs_are_capped_in_bytes() -> None:
    # 200 jobs of 900 KB each (180 MB) with the default caps
    recent = RecentJobs()
    for i in range(200):
        recent.remember(f"job{i}", 1, f'"{"x" * 900_000}{i}"', {}, terminal=False)
    assert recent.bytes <= recent.max_bytes == 64 << 20
    assert len(recent) <= (64 << 20) // 900_000  # 74, where the count cap alone kept 200
    assert recent.record("job199") is not None  # the newest stay
    recent.forget("job199")
    recent.clear()
    assert recent.bytes == 0
