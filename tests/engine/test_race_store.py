"""Races and subflow branches in process, on the embedded store, a real Redis and a Redis
Cluster: one winner when results reach two orchestrators at once, and children that live
in other partitions than their parent."""

from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

from engine.runtime.orchestrator import Orchestrator

# The store fixture `url`: the embedded store, a real Redis and a Redis Cluster.
from tests.engine.test_job_controls import url  # noqa: F401
from tests.engine.test_orchestrator import finished, orchestrator, run_task

RACE = """
blueprint: race
start: fetch
states:
  fetch:
    parallel:
      compete: true
      branches:
        a: {task: lookup, params: {name: a}}
        b: {task: lookup, params: {name: b}}
        c: {task: lookup, params: {name: c}}
    on: {success: hold}
  hold: {wait: 1h, next: done}
  done: {end: finished, output: "${ steps.fetch }"}
"""

FAN = """
blueprint: fan
start: each
states:
  each:
    parallel:
      for_each: initial_data.numbers
      max_concurrency: 2
      subflow: {blueprint: double, input: {n: "${ item }"}}
    on: {success: done}
  done: {end: finished, output: "${ steps.each }"}
"""

DOUBLE = """
blueprint: double
start: work
states:
  work: {task: double, params: {n: "${ initial_data.n }"}, on: {success: done}}
  done: {end: finished, output: "${ steps.work }"}
"""


async def test_two_results_at_two_orchestrators_give_one_winner(
    url: str,  # noqa: F811  # the fixture
    tmp_path: Path,
) -> None:
    """Given a race whose three branches are leased, when two of them answer at the same
    moment, each to another orchestrator (one, on the embedded store), then exactly one is
    accepted and wins; the other is ignored, and the third is told to cancel."""
    async with AsyncExitStack() as stack:
        first = await stack.enter_async_context(orchestrator(url, tmp_path, RACE))
        second: Orchestrator = first
        if url != "memory://":  # the embedded store lives in one process
            second = await stack.enter_async_context(orchestrator(url, tmp_path, RACE))
        job_id = await first.submit(first.registry.by_name["race"], {}, client="c")
        tasks = [await first.next_task(f"w{n}", ("lookup",), 5) for n in range(3)]
        assert all(task is not None for task in tasks)
        by_name: dict[str, dict[str, Any]] = {t["params"]["name"]: t for t in tasks if t}

        def answer(name: str) -> dict[str, Any]:
            task = by_name[name]
            return {"job_id": job_id, "task_id": task["task_id"], "data": {"from": name}}

        worker_of = {name: f"w{n}" for n, name in enumerate(by_name)}
        replies = await asyncio.gather(
            first.submit_result(worker_of["a"], answer("a")),
            second.submit_result(worker_of["b"], answer("b")),
        )
        accepted = [r for r in replies if r["status"] == "accepted"]
        assert len(accepted) == 1, replies
        assert [r["reason"] for r in replies if r["status"] == "ignored"] == ["superseded"]
        doc = await first.get_job(job_id, None)
        assert doc is not None
        winner = "a" if replies[0]["status"] == "accepted" else "b"
        assert (doc["state"], doc["status"]) == ("hold", "waiting")
        assert doc["steps"]["fetch"] == {"branch": winner, "result": {"from": winner}}
        history = await first.history(job_id, None)
        assert history is not None
        assert [e["event"] for e in history].count("parallel_won") == 1
        cancelled = {e["task_id"] for e in history if e["event"] == "task_cancelled"}
        loser = "b" if winner == "a" else "a"
        assert cancelled == {by_name[loser]["task_id"], by_name["c"]["task_id"]}


async def test_a_for_each_of_subflows_joins_children_from_other_partitions(
    url: str,  # noqa: F811  # the fixture
    tmp_path: Path,
) -> None:
    """Given a for_each of subflow branches (two at a time), when the children's tasks are
    answered, then each child is a job of its own pointing back at its branch, and the
    parent joins their outputs in item order."""
    async with orchestrator(url, tmp_path, FAN, DOUBLE) as orch:
        job_id = await orch.submit(orch.registry.by_name["fan"], {"numbers": [1, 2, 3]}, client="c")
        for _ in range(3):
            await run_task(orch, "w", "double", lambda t: {"data": {"n": 2 * t["params"]["n"]}})
        doc = await finished(orch, job_id)
        assert doc["status"] == "finished"
        assert doc["result"] == [{"n": 2}, {"n": 4}, {"n": 6}]
        history = await orch.history(job_id, None)
        assert history is not None
        started = [e for e in history if e["event"] == "subflow_started"]
        for event in started:
            child = await orch.get_job(event["child_job_id"], None)
            assert child is not None
            assert child["parent"] == {
                "job_id": job_id,
                "state": "each",
                "depth": 1,
                "branch": event["branch"],
            }
