"""A wide `for_each` costs the same per branch whatever its width (issue 18): the job document
keeps counters only, each item is stored once, each branch result writes its own field, and
the join gathers the results once.

Told with the pure rules (what a branch result's change writes) and through the orchestrator
on a real Redis and on memory:// (what the commit script is sent, and what the job hash keeps
after the join).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from engine.jsonutil import dumps
from engine.runtime.jobdoc import Effects
from engine.store.client import Store
from tests.engine.test_flow_control import answer, drain
from tests.engine.test_flow_control import fanout as fanout_text
from tests.engine.test_orchestrator import finished, orchestrator
from tests.engine.test_rules import bp, fanout
from tests.support.rules_driver import RulesDriver

LIMIT = 10  # branches in flight


def written(job: RulesDriver, fx: Effects) -> int:
    """The bytes a change writes to Redis: the document (its initial_data is stored apart,
    once), the branch fields it sets, the payloads of the tasks it queues and its history
    entries (as the orchestrator commits)."""
    return (
        len(dumps({k: v for k, v in job.doc.items() if k != "initial_data"}))
        + sum(len(dumps(v)) for v in fx.branch_items.values())
        + sum(len(dumps(v)) for v in fx.branch_results.values())
        + sum(len(dumps(e.payload)) for e in fx.enqueue)
        + sum(len(dumps(event)) for event in fx.history)
    )


def bytes_per_result(items: int, results: int = 30) -> float:
    """The mean bytes written by each of `results` branch results of a for_each of `items`."""
    job = RulesDriver(fanout(limit=LIMIT), {"items": list(range(items))})
    total = 0
    for _ in range(results):
        task = job.lease("w")
        fx = job.result(task, data={"sq": task["params"]["x"] ** 2})
        assert isinstance(fx, Effects)
        total += written(job, fx)
    return total / results


def test_the_bytes_a_branch_result_writes_do_not_grow_with_the_width() -> None:
    # given for_each states of 100 and of 10,000 items, 10 branches in flight
    # when branch results arrive
    narrow, wide = bytes_per_result(100), bytes_per_result(10_000)
    # then each writes about as much at 10,000 items as at 100 (ids and indexes have a
    # few more digits), not the items or results of every other branch
    assert wide < 1.15 * narrow, (narrow, wide)


def test_a_wide_for_each_joins_every_result_in_order() -> None:
    job = RulesDriver(fanout(limit=LIMIT), {"items": list(range(2_000))})
    while job.status == "running":
        task = job.lease("w")
        job.result(task, data={"sq": task["params"]["x"] ** 2})
    assert job.status == "finished"
    assert job.doc["result"] == [{"sq": x * x} for x in range(2_000)]
    assert job.doc["parallel"] is None
    # the stored items and results are forgotten once joined
    assert (job.branch_items, job.branch_results) == ({}, {})


class Sent:
    """The size of every commit script call's arguments, per job change batch."""

    def __init__(self, store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
        self.sizes: list[int] = []
        real = store._batch_call

        def spy(partition: int, changes: Any) -> tuple[list[str], list[str]]:
            keys, args = real(partition, changes)
            self.sizes.append(sum(len(arg) for arg in args))
            return keys, args

        monkeypatch.setattr(store, "_batch_call", spy)


async def sent_per_result(
    store_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, items: int
) -> tuple[int, dict[str, Any], list[str]]:
    """(the largest commit a branch result sends, the finished job, its hash's field names)."""
    async with orchestrator(store_url, tmp_path, fanout_text(limit=LIMIT)) as orch:
        job_id = await orch.submit(
            orch.registry.by_name["fanout"], {"items": list(range(items))}, client="c"
        )
        sent = Sent(orch.store, monkeypatch)
        largest = 0
        for n in range(items):
            (task,) = await drain(orch, "w", "square", 1)
            sent.sizes.clear()
            reply = await answer(orch, "w", task, data={"sq": task["params"]["x"] ** 2})
            assert reply == {"status": "accepted"}
            if n < items - 1:  # (not the join, which writes the gathered results)
                largest = max([largest, *sent.sizes])
        doc = await finished(orch, job_id, 10)
        fields = await orch.store.redis.hkeys(orch.store.keys.job(job_id))
        return largest, doc, [str(name) for name in fields]


async def test_a_branch_result_sends_the_same_commit_whatever_the_width(
    store_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # given fan-outs of 40 and of 1,000 items (all branches answered, 10 in flight)
    narrow, doc, _ = await sent_per_result(store_url, tmp_path, monkeypatch, 40)
    assert doc["result"] == [{"sq": x * x} for x in range(40)]
    wide, doc, fields = await sent_per_result(store_url, tmp_path, monkeypatch, 1_000)
    # then a branch result's commit is about as large at 1,000 items as at 40
    assert wide < 1.25 * narrow, (narrow, wide)
    # and the join gathered every result in item order, and left no branch field behind
    assert doc["status"] == "finished"
    assert doc["result"] == [{"sq": x * x} for x in range(1_000)]
    assert not [name for name in fields if name.startswith(("i:", "r:"))]


UNLIMITED = """
blueprint: unlimited
start: fan
states:
  fan:
    parallel:
      for_each: initial_data.items
      task: square
      params: {x: "${ item }"}
      retry: {max_attempts: 2, initial: 1s, jitter: 0}
      on_branch_failure: collect
    on: {success: done}
  done: {end: finished, output: "${ steps.fan }"}
"""


def test_a_for_each_without_max_concurrency_runs_100_branches_at_a_time() -> None:
    job = RulesDriver(bp(UNLIMITED), {"items": list(range(250))})
    assert len(job.queued()) == 100
    first = job.lease("w")
    job.result(first, data={"sq": 0})
    # one ended: the 101st starts, with its own item
    assert len(job.queued()) == 100
    assert job.queued()[-1]["params"] == {"x": 100}


def test_retries_and_collected_failures_of_a_wide_for_each_join_in_order() -> None:
    # given 300 branches, each failing its first attempt, and branch 7 failing both
    job = RulesDriver(bp(UNLIMITED), {"items": list(range(300))})
    error = {"code": "TRANSIENT_ERROR", "message": "try again"}
    while job.status == "running":
        if not job.queue:
            job.fire_due(job.now + 1_000)  # the retries fall due
            continue
        task = job.lease("w")
        x = task["params"]["x"]
        if task["metadata"]["attempt"] == 1 or x == 7:
            job.result(task, "failure", error=error)
        else:
            job.result(task, data={"sq": x * x})
    # then every retry launched its own branch's item, and the join kept item order
    result = job.doc["result"]
    assert job.status == "finished"
    assert [r.get("sq") for r in result] == [None if x == 7 else x * x for x in range(300)]
    assert result[7]["error"]["branch"] == 7
    assert (job.branch_items, job.branch_results) == ({}, {})


async def test_a_branch_put_back_is_launched_again_with_its_stored_item(
    store_url: str, tmp_path: Path
) -> None:
    # given a for_each whose branch 1 was leased to a poll that had gone
    async with orchestrator(store_url, tmp_path, fanout_text(limit=2)) as orch:
        job_id = await orch.submit(
            orch.registry.by_name["fanout"], {"items": [10, 11, 12]}, client="c"
        )
        first, second = await drain(orch, "w", "square", 2)
        # when it is put back (its item is read from the job's hash: no rule had it at hand)
        assert await orch.release("w", second) == "released"
        (again,) = await drain(orch, "w2", "square", 1)
        assert again["params"] == second["params"] == {"x": 11, "i": 1}
        # then every branch still joins with its own result
        for task in (first, again):
            await answer(orch, task_worker(task, first, "w", "w2"), task, data={"sq": 1})
        (third,) = await drain(orch, "w", "square", 1)
        assert third["params"] == {"x": 12, "i": 2}
        await answer(orch, "w", third, data={"sq": 144})
        doc = await finished(orch, job_id, 10)
        assert doc["result"] == [{"sq": 1}, {"sq": 1}, {"sq": 144}]


def task_worker(task: dict[str, Any], first: dict[str, Any], one: str, other: str) -> str:
    return one if task is first else other


def test_a_cancelled_fan_out_forgets_its_stored_items() -> None:
    job = RulesDriver(fanout(limit=LIMIT), {"items": list(range(500))})
    job.result(job.lease("w"), data={"sq": 0})
    assert (len(job.branch_items), len(job.branch_results)) == (500, 1)
    job.cancel()
    assert job.status == "cancelled"
    assert (job.branch_items, job.branch_results) == ({}, {})


def test_a_fan_out_entered_by_an_earlier_engine_goes_on_to_its_join() -> None:
    # given a job whose parallel state keeps its items and results in the document, as
    # the engine wrote it before they moved out, with branch 0 settled
    job = RulesDriver(fanout(limit=2), {"items": [3, 4, 5]})
    first, second = job.lease("w"), job.lease("w")
    job.result(first, data={"sq": 9})
    book = job.doc["parallel"]
    del book["run"]
    book.update(items=[3, 4, 5], results=[{"sq": 9}, None, None])
    job.branch_items.clear()
    job.branch_results.clear()
    # when the other branches end
    job.result(second, data={"sq": 16})
    job.result(job.lease("w"), data={"sq": 25})
    # then the join has every result, the one settled before included
    assert job.doc["result"] == [{"sq": 9}, {"sq": 16}, {"sq": 25}]
