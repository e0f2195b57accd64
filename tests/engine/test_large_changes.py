"""Large single changes (issue: `too many results to unpack`): a `for_each` over thousands of
items and a long worker-free loop each make one change with thousands of fields and queue
entries; they must commit, on a real Redis and on memory://, and never fail a neighbour that
happens to share their batch."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from engine.runtime.orchestrator import Orchestrator
from tests.engine.test_flow_control import answer, fanout
from tests.engine.test_orchestrator import LINEAR, finished, orchestrator

ITEMS = 10_000

# Each round appends one tick with `set`, then `choice` loops until there are 1,000: all
# worker-free, so the whole run is evaluated in the submit's single commit.
TICKS = """
blueprint: ticks
limits: {max_transitions: 5000}
start: tick
states:
  tick:
    set: {ticks: "${ [state_history.ticks || `[]`, [`1`]][] }"}
    next: enough
  enough:
    choice:
      - when: "length(state_history.ticks) >= initial_data.rounds"
        goto: done
    otherwise: tick
  done: {end: finished, output: {rounds: "${ length(state_history.ticks) }"}}
"""


async def queued(orch: Orchestrator, task_type: str) -> int:
    keys = orch.store.keys
    return sum(
        [await orch.store.redis.zcard(keys.queue(p, task_type)) for p in range(keys.partitions)]
    )


@pytest.mark.timeout(120)
async def test_for_each_over_ten_thousand_items(store_url: str, tmp_path: Path) -> None:
    # given a for_each with no concurrency limit: one change queues every branch
    async with orchestrator(store_url, tmp_path, fanout(limit=ITEMS)) as orch:
        items = list(range(ITEMS))
        # when it is submitted
        job_id = await orch.submit(orch.registry.by_name["fanout"], {"items": items}, client="c")
        # then every branch is queued, and a worker gets one
        assert await queued(orch, "square") == ITEMS
        task = await orch.next_task("w", ("square",), 5)
        assert task is not None
        # and when that branch fails, one change cancels the 9,999 others (fail_fast)
        failure = {"code": "PERMANENT_ERROR", "message": "bad item"}
        reply = await answer(orch, "w", task, status="failure", error=failure)
        assert reply == {"status": "accepted"}
        doc = await finished(orch, job_id, 30)
        assert doc["state"] == "broken"
        assert doc["steps"]["fan"]["error"]["branch"] == task["params"]["i"]
        assert await queued(orch, "square") == 0


async def test_a_thousand_rounds_of_set_and_choice(store_url: str, tmp_path: Path) -> None:
    async with orchestrator(store_url, tmp_path, TICKS) as orch:
        job_id = await orch.submit(orch.registry.by_name["ticks"], {"rounds": 1000}, client="c")
        doc = await finished(orch, job_id, 30)
        assert doc["status"] == "finished", doc.get("error")
        assert doc["result"] == {"rounds": 1000}


async def test_a_large_change_never_fails_its_batch_neighbours(
    store_url: str, tmp_path: Path
) -> None:
    # given small jobs submitted in the same instant as a large one (one group commit)
    async with orchestrator(store_url, tmp_path, fanout(limit=ITEMS), LINEAR) as orch:
        small = [
            orch.submit(orch.registry.by_name["linear"], {"n": n}, client="c") for n in range(20)
        ]
        large = orch.submit(
            orch.registry.by_name["fanout"], {"items": list(range(3000))}, client="c"
        )
        # when they commit together, then each is accepted
        big, *others = await asyncio.gather(large, *small, return_exceptions=True)
        # (each on its own: a large change runs in a script call of its own)
        assert [o for o in others if isinstance(o, BaseException)] == []
        assert not isinstance(big, BaseException), big
        for job_id in (big, *others):
            assert await orch.store.exists(str(job_id))
