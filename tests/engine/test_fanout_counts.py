"""What a `for_each` branch costs in Redis, counted on a real Redis at several widths: the
commands it runs (INFO commandstats, a script's inner commands included) and the bytes the
orchestrator sends (INFO stats `total_net_input_bytes`) per branch stay flat from 100 to
2,000 items, and a 10,000-item fan-out joins every result in item order (issue 18).

A worker takes up to 100 tasks per poll and answers them together, as worker_sdk does: the
results of one job that arrive together are applied as one change. The branches in flight
(100, max_concurrency) are the same at every width; what a branch costs must not depend on
them nor on the items.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from engine.runtime.host import OrchestratorSettings
from engine.runtime.orchestrator import Orchestrator
from tests.engine.test_flow_control import fanout
from tests.engine.test_orchestrator import finished, orchestrator

IN_FLIGHT = 100
# The timers and the dispatcher's sweep run by the clock, not per branch: keep them quiet.
QUIET = OrchestratorSettings(timer_interval_s=3600)

pytestmark = pytest.mark.timeout(120)


async def counters(orch: Orchestrator) -> tuple[int, int]:
    """(commands Redis ran but INFO, bytes it received) so far."""
    stats = await orch.store.redis.info("commandstats")
    commands = sum(int(entry["calls"]) for name, entry in stats.items() if name != "cmdstat_info")
    received = int((await orch.store.redis.info("stats"))["total_net_input_bytes"])
    return commands, received


async def run_fanout(orch: Orchestrator, items: int) -> tuple[float, float, dict[str, Any]]:
    """Run one for_each of `items` to its join: (commands, bytes received) per branch, and
    the finished job."""
    before = await counters(orch)
    job_id = await orch.submit(
        orch.registry.by_name["fanout"], {"items": list(range(items))}, client="c"
    )
    answered = 0
    while answered < items:
        tasks = await orch.next_tasks("w", ("square",), 2, IN_FLIGHT)
        assert tasks, f"no task came after {answered} of {items} results"
        replies = await asyncio.gather(
            *(
                orch.submit_result(
                    "w",
                    {
                        "job_id": t["job_id"],
                        "task_id": t["task_id"],
                        "data": {"sq": t["params"]["x"] ** 2},
                    },
                )
                for t in tasks
            )
        )
        assert replies == [{"status": "accepted"}] * len(tasks)
        answered += len(tasks)
    doc = await finished(orch, job_id, 30)
    after = await counters(orch)
    return (after[0] - before[0]) / items, (after[1] - before[1]) / items, doc


async def test_a_branch_costs_the_same_commands_and_bytes_at_any_width(
    redis_url: str, tmp_path: Path
) -> None:
    async with orchestrator(redis_url, tmp_path, fanout(IN_FLIGHT), orch_settings=QUIET) as orch:
        # Given for_each states of 100, 2,000 and 10,000 items, 100 branches in flight
        counted = {}
        for items in (100, 2_000, 10_000):
            commands, received, doc = await run_fanout(orch, items)
            # then each joins every result, in item order
            assert doc["status"] == "finished"
            assert doc["result"] == [{"sq": x * x} for x in range(items)]
            counted[items] = (commands, received)
        print(f"\nper branch (Redis commands, bytes sent): {counted}")
    (narrow_commands, narrow_bytes) = counted[100]
    for items in (2_000, 10_000):
        commands, received = counted[items]
        # and a branch costs no more Redis commands, nor bytes, at 2,000 or 10,000 items
        # than at 100 (the ids of tasks and branches have a few more digits). When the job
        # document held every task in flight, a branch sent about twice as many bytes at
        # 2,000 items (100 in flight throughout) as at 100 (fewer and fewer as they end).
        assert commands <= 1.25 * narrow_commands + 0.5, counted
        assert received <= 1.25 * narrow_bytes, counted
    # and a few commands at most: the lease script's four (ZREM, HMGET, HSET, ZADD) and a
    # share of the commit of the results that arrived together
    assert counted[10_000][0] <= 6, counted
