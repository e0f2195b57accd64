"""Job labels and search, on the embedded store, a single Redis and a Redis Cluster: jobs are
found by label through the label index (not by reading every job), paged, and expired jobs
leave the label index with the client index."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from engine.blueprint.loader import load_blueprints
from engine.runtime.janitor import IndexJanitor
from engine.runtime.orchestrator import Orchestrator
from engine.runtime.registry import Registry
from engine.store.client import Store
from server.app import orchestrator_settings, runtime_settings
from tests.server.conftest import make_settings
from tests.server.helpers import BLUEPRINTS

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(params=["memory", "redis", "cluster"])
async def orch(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Orchestrator]:
    url = (
        "memory://"
        if request.param == "memory"
        else request.getfixturevalue(f"{request.param}_url")
    )
    settings = make_settings(tmp_path)
    store = await Store.connect(url, partitions=8)
    registry = Registry(load_blueprints([BLUEPRINTS]), runtime_settings(settings))
    orchestrator = Orchestrator(store, registry, orchestrator_settings(settings))
    try:
        yield orchestrator
    finally:
        await store.close()


async def submit(orch: Orchestrator, labels: dict[str, str] | None, client: str = "acme") -> str:
    # `approval` waits for a person: its jobs stay where they are while the test looks.
    blueprint = orch.registry.by_name["expense_approval"]
    data = {"amount": 10, "employee": "ada"}
    return await orch.submit(blueprint, data, client=client, labels=labels)


async def listing(orch: Orchestrator, *labels: tuple[str, str], **filters: Any) -> list[str]:
    """Every page of the acme listing with these filters, three jobs a page."""
    found: list[str] = []
    cursor = None
    while True:
        jobs, cursor = await orch.list_jobs(
            filters.get("client", "acme"),
            status=filters.get("status"),
            blueprint=None,
            limit=3,
            cursor=cursor,
            labels=labels,
        )
        found += [doc["id"] for doc in jobs]
        if cursor is None:
            return found


async def by_age(orch: Orchestrator, ids: list[str]) -> list[str]:
    """`ids` newest first, as a listing orders them: by creation ms, then by id."""
    created = {}
    for job_id in ids:
        doc = await orch.get_job(job_id, None)
        assert doc is not None
        created[job_id] = doc["created_at"]
    return sorted(ids, key=lambda job_id: (created[job_id], job_id), reverse=True)


async def test_jobs_are_found_by_label_newest_first_paged_and_per_client(
    orch: Orchestrator,
) -> None:
    # Given jobs of two customers, one of them cancelled, and another client's job with the
    # same label
    first = [await submit(orch, {"customer": "42", "tier": "gold"}) for _ in range(4)]
    other = [await submit(orch, {"customer": "7"}) for _ in range(3)]
    unlabelled = await submit(orch, None)
    await orch.cancel(first[1], "acme")
    foreign = await submit(orch, {"customer": "42"}, client="globex")
    read: list[int] = []
    real = orch.store.read_docs

    async def counting(job_ids: Any) -> Any:
        read.append(len(job_ids))
        return await real(job_ids)

    orch.store.read_docs = counting  # type: ignore[method-assign]
    # When the client lists by label, with and without a status, and with two labels
    by_customer = await listing(orch, ("customer", "42"))
    cancelled = await listing(orch, ("customer", "42"), status="cancelled")
    both = await listing(orch, ("customer", "42"), ("tier", "gold"))
    none = await listing(orch, ("customer", "42"), ("tier", "silver"))
    # Then it gets exactly the matching jobs, newest first (jobs made in the same ms: the
    # larger id first, as every listing orders them), over pages of 3
    newest_first = await by_age(orch, first)
    assert by_customer == newest_first
    assert cancelled == [first[1]]
    assert both == newest_first
    assert none == []
    # reading only the labelled jobs' documents (4 per listing), never the others
    assert max(read) <= 4
    assert await listing(orch, ("customer", "7")) == await by_age(orch, other)
    assert await listing(orch, ("customer", "42"), client="globex") == [foreign]
    assert unlabelled in await listing(orch)
    doc = await orch.get_job(first[0], "acme")
    assert doc is not None
    assert doc["labels"] == {"customer": "42", "tier": "gold"}


async def label_entries(orch: Orchestrator, client: str, label: str, value: str) -> int:
    keys = orch.store.keys
    sizes = [
        await orch.store.redis.zcard(keys.label_jobs(p, client, label, value))
        for p in range(keys.partitions)
    ]
    return sum(sizes)


async def labels_hash_size(orch: Orchestrator, client: str) -> int:
    keys = orch.store.keys
    sizes = [
        await orch.store.redis.hlen(keys.job_labels(p, client)) for p in range(keys.partitions)
    ]
    return sum(sizes)


async def test_expired_jobs_leave_the_label_indexes(orch: Orchestrator) -> None:
    # Given 30 labelled jobs, 20 of which have reached the end of their retention
    ids = [await submit(orch, {"customer": "42", "batch": str(i % 2)}) for i in range(30)]
    for job_id in ids[:20]:
        await orch.store.redis.delete(orch.store.keys.job(job_id))
    assert await label_entries(orch, "acme", "customer", "42") == 30
    # When the janitor sweeps the client's indexes
    janitor = IndexJanitor(orch.store, budget=4)
    while await janitor.sweep(["acme"]):
        pass
    # Then only the live jobs remain, in every label index and in the labels hash
    assert await label_entries(orch, "acme", "customer", "42") == 10
    assert await label_entries(orch, "acme", "batch", "0") == 5
    assert await label_entries(orch, "acme", "batch", "1") == 5
    assert await labels_hash_size(orch, "acme") == 10
    assert sorted(await listing(orch, ("customer", "42"))) == sorted(ids[20:])


async def test_a_job_created_again_under_a_pruned_id_keeps_its_entries(orch: Orchestrator) -> None:
    # Given a job found expired by the janitor, but created again (the same id, as an
    # Idempotency-Key gives) before the janitor drops it
    blueprint = orch.registry.by_name["expense_approval"]
    data = {"amount": 10, "employee": "ada"}
    assert await orch.create("again", blueprint, data, client="acme", labels={"k": "v"})
    keys = orch.store.keys
    partition = keys.partition("again")
    await orch.store.redis.delete(keys.job("again"))
    real_hmget = orch.store.redis.hmget

    async def recreate_then_read(*args: Any) -> Any:
        found = await real_hmget(*args)
        assert await orch.create("again", blueprint, data, client="acme", labels={"k": "v"})
        return found

    orch.store.redis.hmget = recreate_then_read  # type: ignore[method-assign,assignment]
    # When the janitor goes on
    dropped, _ = await orch.store.prune_client_jobs(partition, "acme", 0, 10)
    # Then it drops nothing: the job is found by its label and in the client's listing
    assert dropped == 0
    assert await listing(orch, ("k", "v")) == ["again"]
