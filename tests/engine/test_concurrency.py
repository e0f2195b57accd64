"""Concurrency keys on the embedded store, a single Redis and a Redis Cluster: at most
`limit` jobs with one key hold a slot, the others wait in line in submission order, an
ending job (finished, failed, cancelled, also while in line) gives its slot back, a redrive
takes one again, and a crash between the steps is repaired by the job's periodic check."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from engine.blueprint.dot import to_dot
from engine.blueprint.loader import load_blueprints
from engine.errors import BlueprintInvalid
from engine.runtime import background, concurrency
from engine.runtime.concurrency import ConcurrencyKeyError
from engine.runtime.host import OrchestratorSettings
from engine.runtime.jobdoc import RuntimeSettings
from engine.runtime.orchestrator import Orchestrator
from engine.runtime.registry import Registry
from engine.store.client import Store
from tests.engine.test_rules import bp

pytestmark = pytest.mark.timeout(90)

HELD = """
blueprint: held
api_endpoint: jobs/held
concurrency: {key: "${ initial_data.customer_id }", limit: 2}
start: review
states:
  review:
    approval: {message: "ok?"}
    on: {approve: done, reject: broken}
  done: {end: finished}
  broken: {end: failed}
"""

FREE = """
blueprint: free
start: review
states:
  review:
    approval: {message: "ok?"}
    on: {approve: done}
  done: {end: finished}
"""

CHECK_MS = 100  # the periodic check, short so that repairs show within a test


# -- the rules ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "key"),
    [({"customer_id": "42"}, "42"), ({"customer_id": 42}, "42"), ({"customer_id": "a b"}, "a b")],
)
def test_a_key_is_a_string_or_an_integer_as_text(data: dict[str, Any], key: str) -> None:
    assert concurrency.key_of(bp(HELD), data, {}) == key


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        ({}, "gave null (a missing field?)"),
        ({"customer_id": None}, "gave null"),
        ({"customer_id": True}, "gave bool"),
        ({"customer_id": {"a": 1}}, "gave dict"),
        ({"customer_id": [1]}, "gave list"),
        ({"customer_id": 1.5}, "gave float"),
        ({"customer_id": ""}, "string of 0 characters"),
        ({"customer_id": "x" * 201}, "string of 201 characters"),
    ],
)
def test_a_key_that_is_not_a_usable_value_is_refused(data: dict[str, Any], problem: str) -> None:
    with pytest.raises(ConcurrencyKeyError, match=r"initial_data\.customer_id") as caught:
        concurrency.key_of(bp(HELD), data, {})
    assert problem in str(caught.value)


def test_a_constant_key_caps_every_job_of_the_blueprint() -> None:
    assert (
        concurrency.key_of(bp(HELD.replace("${ initial_data.customer_id }", "all")), {}, {})
        == "all"
    )


def test_the_hash_tag_depends_on_blueprint_and_key_only() -> None:
    assert concurrency.tag("held", "42") == concurrency.tag("held", "42")
    assert concurrency.tag("held", "42") != concurrency.tag("held", "43")
    assert concurrency.tag("held", "42") != concurrency.tag("other", "42")
    assert "}" not in concurrency.tag("held", "}{")


def problems_of(text: str, tmp_path: Path) -> list[str]:
    (tmp_path / "bp.yaml").write_text(text, encoding="utf-8")
    with pytest.raises(BlueprintInvalid) as caught:
        load_blueprints([tmp_path])
    return [str(problem) for problem in caught.value.problems]


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ('{key: "${ initial_data.c }", limit: 0}', "4:50: $.concurrency.limit: must be at least 1"),
        (
            '{key: "${ initial_data.c }", limit: 10001}',
            "4:50: $.concurrency.limit: must be at most 10000",
        ),
        (
            '{key: "${ initial_data.c }", limit: "2"}',
            "4:50: $.concurrency.limit: expected an integer",
        ),
        ('{key: "${ initial_data.c }"}', "4:14: $.concurrency: missing required field 'limit'"),
        ('{key: "${ initial_data. }", limit: 2}', "4:20: $.concurrency.key: invalid JMESPath"),
        ('{key: "${ steps.a.b }", limit: 2}', "4:20: $.concurrency.key: the concurrency key is"),
        ('{key: "x", limit: 2, per: 3}', "4:35: $.concurrency.per: unknown field"),
    ],
)
def test_a_bad_concurrency_spec_is_reported_at_file_line_col(
    spec: str, expected: str, tmp_path: Path
) -> None:
    text = FREE.replace("start: review", f"concurrency: {spec}\nstart: review", 1)
    found = problems_of(text.replace("blueprint: free\n", "blueprint: free\n#\n"), tmp_path)
    assert any(f"bp.yaml:{expected}" in problem for problem in found), found


def test_the_graph_shows_the_limit_on_the_start_edge() -> None:
    assert "concurrency 2 per ${ initial_data.customer_id }" in to_dot(bp(HELD))
    assert "concurrency" not in to_dot(bp(FREE))


# -- the key's script ---------------------------------------------------------------------------


@pytest.fixture
async def store(every_store_url: str) -> AsyncIterator[Store]:
    url = every_store_url
    opened = await Store.connect(url, partitions=8)
    try:
        yield opened
    finally:
        await opened.close()


async def test_the_script_admits_up_to_the_limit_in_arrival_order(store: Store) -> None:
    # Given five jobs arriving at a key with two slots
    answers = [await store.slot("acquire", "t1", f"j{i}|1", 2) for i in range(5)]
    # Then the first two are admitted (numbers 1, 2) and the others wait, in order
    assert [(a.where, a.number) for a in answers] == [
        ("run", 1),
        ("run", 2),
        ("wait", 0),
        ("wait", 1),
        ("wait", 2),
    ]
    assert [a.admitted for a in answers[:2]] == [[("j0|1", 1)], [("j1|1", 2)]]
    # and acquiring again changes nothing (a repair after a crash): an admitted member is
    # answered with its admission, so that it gets started
    again = await store.slot("acquire", "t1", "j0|1", 2)
    assert (again.where, again.number, again.admitted) == ("run", 1, [("j0|1", 1)])
    assert (await store.slot("acquire", "t1", "j3|1", 2)).where == "wait"
    # When a job in line leaves (cancelled), then a running one ends
    assert (await store.slot("release", "t1", "j3|1", 2)).admitted == []
    freed = await store.slot("release", "t1", "j0|1", 2)
    # Then the head of the line is admitted, and a second release is a no-op
    assert freed.admitted == [("j2|1", 3)]
    assert (await store.slot("release", "t1", "j0|1", 2)).admitted == []
    assert await store.slot_counts("t1", "j4|1") == (2, 0, 1)
    # A job run again (round 2) forgets its earlier round: no slot is held twice
    again = await store.slot("acquire", "t1", "j1|2", 2, previous="j1|1")
    assert again.admitted == [("j4|1", 4)]
    assert again.where == "wait"
    assert await store.slot_counts("t1", "j1|2") == (2, 0, 1)


async def test_keys_of_one_tag_share_a_slot_and_only_the_counters_expire(store: Store) -> None:
    keys = store.keys
    names = [keys.slots("t2"), keys.slot_queue("t2"), keys.slot_counters("t2")]
    assert len({name.split("{")[1].split("}")[0] for name in names}) == 1
    await store.slot("acquire", "t2", "a|1", 1)
    await store.slot("acquire", "t2", "b|1", 1)
    # a job may hold its slot for any time: the sets never expire under it
    assert [await store.redis.pttl(name) for name in names[:2]] == [-1, -1]
    assert await store.redis.pttl(names[2]) > 86_400_000
    # and they are gone once empty
    await store.slot("release", "t2", "a|1", 1)
    await store.slot("release", "t2", "b|1", 1)
    assert [await store.redis.exists(name) for name in names[:2]] == [0, 0]


# -- jobs ---------------------------------------------------------------------------------------


@pytest.fixture
async def orch(every_store_url: str, tmp_path: Path) -> AsyncIterator[Orchestrator]:
    url = every_store_url
    (tmp_path / "held.yaml").write_text(HELD, encoding="utf-8")
    (tmp_path / "free.yaml").write_text(FREE, encoding="utf-8")
    store = await Store.connect(url, partitions=8)
    registry = Registry(load_blueprints([tmp_path]), RuntimeSettings(slot_check_ms=CHECK_MS))
    orchestrator = Orchestrator(store, registry, OrchestratorSettings())
    try:
        yield orchestrator
    finally:
        await orchestrator.join()
        await store.close()


async def submit(orch: Orchestrator, customer: Any, blueprint: str = "held") -> str:
    return await orch.submit(
        orch.registry.by_name[blueprint], {"customer_id": customer}, client="c"
    )


async def states(orch: Orchestrator, ids: list[str]) -> list[str]:
    """Each job's status, `waiting_for_human` shortened to `running` (it holds a slot)."""
    await orch.join()
    found = []
    for job_id in ids:
        doc = await orch.get_job(job_id, None)
        assert doc is not None
        found.append("running" if doc["status"] == "waiting_for_human" else str(doc["status"]))
    return found


async def eventually(check: Callable[[], Awaitable[bool]], seconds: float = 10) -> None:
    deadline = time.monotonic() + seconds
    while not await check():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


async def test_at_most_limit_jobs_of_a_key_run_and_the_rest_wait_in_order(
    orch: Orchestrator,
) -> None:
    # Given four jobs of customer 42 and one of customer 7, limit 2 per customer
    ids = [await submit(orch, 42) for _ in range(4)]
    other = await submit(orch, 7)
    # Then two of 42's run, the other two wait (queued, no task), 7's runs
    assert await states(orch, [*ids, other]) == [
        "running",
        "running",
        "queued",
        "queued",
        "running",
    ]
    waiting = await orch.get_job(ids[2], None)
    assert waiting is not None
    assert waiting["state"] is None
    assert waiting["tasks"] == {}
    # When a running job is cancelled, then another finishes
    await orch.cancel(ids[0], None)
    assert await states(orch, ids) == ["cancelled", "running", "running", "queued"]
    await orch.decide(ids[1], None, "approve")
    assert await states(orch, ids) == ["cancelled", "finished", "running", "running"]
    # Then the jobs in line were admitted in submission order, each once
    admitted = []
    for job_id in ids:
        events = await orch.history(job_id, None) or []
        admitted += [e["n"] for e in events if e["event"] == "concurrency_admitted"]
    assert admitted == [1, 2, 3, 4]


async def test_a_job_cancelled_in_line_leaves_it_and_a_failed_one_frees_its_slot(
    orch: Orchestrator,
) -> None:
    ids = [await submit(orch, "k") for _ in range(4)]
    await orch.cancel(ids[2], None)  # in line
    await orch.decide(ids[0], None, "reject")  # fails
    assert await states(orch, ids) == ["failed", "running", "cancelled", "running"]
    doc = await orch.get_job(ids[2], None)
    assert doc is not None
    assert doc["slot"]["owed"] is False  # given back, nothing owed
    assert await orch.slot_counts(doc["slot"]["tag"], "x|1") == (2, None, 0)


async def test_a_redriven_job_takes_a_slot_again(orch: Orchestrator) -> None:
    # Given two jobs holding both slots and a cancelled one
    ids = [await submit(orch, "r") for _ in range(3)]
    await orch.cancel(ids[0], None)
    assert await states(orch, ids) == ["cancelled", "running", "running"]
    # When the cancelled job is redriven while both slots are taken
    answer = await orch.controls.redrive(ids[0], "c", patch={"customer_id": "elsewhere"})
    assert answer is not None
    # Then it waits in line for one, under a new round, and runs once one is free
    assert await states(orch, ids) == ["queued", "running", "running"]
    doc = await orch.get_job(ids[0], None)
    assert doc is not None
    assert doc["slot"]["round"] == 2
    assert doc["slot"]["key"] == "r"  # its first key, whatever the patch
    await orch.decide(ids[1], None, "approve")
    assert await states(orch, ids) == ["running", "finished", "running"]


async def test_a_key_that_gives_null_creates_no_job(orch: Orchestrator) -> None:
    with pytest.raises(ConcurrencyKeyError, match="gave null"):
        await submit(orch, None)
    jobs, _ = await orch.list_jobs("c", status=None, blueprint=None, limit=10)
    assert jobs == []


async def test_a_job_kept_out_of_line_by_a_crash_joins_it_at_its_check(
    orch: Orchestrator,
) -> None:
    # Given a job created while its key's line could not be reached (the process died
    # between the two steps), with a free slot
    real = orch.slots.acquire

    async def lost(doc: Any) -> Any:
        raise asyncio.CancelledError  # as if killed here

    orch.slots.acquire = lost  # type: ignore[method-assign]
    with pytest.raises(asyncio.CancelledError):
        await submit(orch, "crash")
    orch.slots.acquire = real  # type: ignore[method-assign]
    jobs, _ = await orch.list_jobs("c", status="queued", blueprint=None, limit=10)
    assert len(jobs) == 1
    # When the timers fire after its check is due
    job_id = jobs[0]["id"]

    async def running() -> bool:
        await background.fire_timers(orch)
        return await states(orch, [job_id]) == ["running"]

    # Then it joins the line, is admitted and starts
    await eventually(running)


async def test_a_slot_whose_release_was_lost_is_given_back_at_the_check(
    orch: Orchestrator,
) -> None:
    # Given two running jobs and one in line, and a process that dies right after a job's
    # ending commit (before it gives the slot back)
    ids = [await submit(orch, "lost") for _ in range(3)]
    real = orch.slots.release

    async def lost(job_id: str, tag: str, round_: int, limit: int) -> None:
        return None  # killed before the release

    orch.slots.release = lost  # type: ignore[method-assign]
    await orch.cancel(ids[0], None)
    orch.slots.release = real  # type: ignore[method-assign]
    assert await states(orch, ids) == ["cancelled", "running", "queued"]
    doc = await orch.get_job(ids[0], None)
    assert doc is not None
    assert doc["slot"]["owed"] is True
    # When the ended job's timer fires (any orchestrator's timer loop)

    async def admitted() -> bool:
        await background.fire_timers(orch)
        return await states(orch, ids) == ["cancelled", "running", "running"]

    # Then the slot is given back and the next in line runs; nothing is owed any more
    await eventually(admitted)
    doc = await orch.get_job(ids[0], None)
    assert doc is not None
    assert doc["slot"]["owed"] is False


async def test_a_blueprint_without_concurrency_touches_no_key_state(orch: Orchestrator) -> None:
    job_id = await submit(orch, 1, blueprint="free")
    await orch.cancel(job_id, None)
    await orch.join()
    doc = await orch.get_job(job_id, None)
    assert doc is not None
    assert "slot" not in doc
    keys = [str(k) async for k in orch.store.redis.scan_iter(match="il:{c:*")]
    assert keys == []


async def test_a_job_paused_in_line_keeps_its_place_and_starts_when_resumed(
    orch: Orchestrator,
) -> None:
    # Given two running jobs and a third, paused while it waits
    ids = [await submit(orch, "p") for _ in range(3)]
    assert await orch.controls.pause(ids[2], "c") is not None
    # When a slot frees up
    await orch.cancel(ids[0], None)
    # Then the paused job is admitted but stays where it was until resumed
    assert await states(orch, ids) == ["cancelled", "running", "queued"]
    doc = await orch.get_job(ids[2], None)
    assert doc is not None
    assert doc["slot"]["n"] == 3
    assert doc["state"] is None
    assert await orch.controls.resume(ids[2], "c") is not None
    assert await states(orch, ids) == ["cancelled", "running", "running"]


async def test_a_result_timeout_counts_while_a_job_waits_and_frees_its_place(
    orch: Orchestrator,
) -> None:
    # Given two running jobs, and a third that may take at most 200 ms in all
    ids = [await submit(orch, "t") for _ in range(2)]
    late = await orch.submit(
        orch.registry.by_name["held"], {"customer_id": "t"}, client="c", result_timeout_ms=200
    )
    assert await states(orch, [late]) == ["queued"]

    # When its deadline passes while it waits, then it fails with JOB_TIMEOUT and leaves
    # the line (nothing is owed once its timer has given its place back)
    async def timed_out() -> bool:
        await background.fire_timers(orch)
        doc = await orch.get_job(late, None)
        assert doc is not None
        return doc["status"] == "failed" and not doc["slot"]["owed"]

    await eventually(timed_out)
    doc = await orch.get_job(late, None)
    assert doc is not None
    error = doc["error"]
    assert error is not None
    assert error["code"] == "JOB_TIMEOUT"
    assert await orch.slot_counts(doc["slot"]["tag"], f"{late}|1") == (2, None, 0)
    assert await states(orch, ids) == ["running", "running"]


async def test_a_job_cancelled_in_line_is_redriven_to_where_it_waited_to_go(
    orch: Orchestrator,
) -> None:
    # Given a job cancelled while it waited in line
    ids = [await submit(orch, "w") for _ in range(3)]
    await orch.cancel(ids[2], None)
    assert await states(orch, ids) == ["running", "running", "cancelled"]
    # When it is redriven, then it waits in line again, and runs its first state once a
    # slot frees up
    assert await orch.controls.redrive(ids[2], "c") is not None
    assert await states(orch, ids) == ["running", "running", "queued"]
    await orch.decide(ids[0], None, "approve")
    assert await states(orch, ids) == ["finished", "running", "running"]
    doc = await orch.get_job(ids[2], None)
    assert doc is not None
    assert doc["state"] == "review"
