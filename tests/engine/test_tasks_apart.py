"""A job's active tasks are stored apart from its document (engine/store/apart.py): one
field per task record (`t:`) and per lease (`l:`). A job written before, with its tasks in
the document and its leases in one `leases` field, runs on: its queued tasks are leased, its
results are applied, and its next change stores its tasks apart.
"""

from __future__ import annotations

from pathlib import Path

from engine.jsonutil import dumps, loads
from engine.runtime.orchestrator import Orchestrator
from engine.store.apart import unpack
from tests.engine.test_flow_control import answer, drain, fanout
from tests.engine.test_orchestrator import finished, orchestrator


async def store_as_before(orch: Orchestrator, job_id: str) -> None:
    """Rewrite the job's hash in the layout of a job written before tasks were apart."""
    redis, key = orch.store.redis, orch.store.keys.job(job_id)
    stored = await redis.hgetall(key)
    doc = loads(stored["doc"])
    ids = unpack(doc)
    assert ids, "the job has active tasks"
    doc["tasks"] = {t: loads(stored[f"t:{t}"]) for t in ids}
    leases = {t: stored[f"l:{t}"] for t in ids}
    await redis.hset(key, mapping={"doc": dumps(doc), "leases": dumps(leases)})
    await redis.hdel(key, *[f"{kind}:{t}" for t in ids for kind in ("t", "l")])
    orch.recent.clear()  # (read it from Redis)


async def test_a_job_written_with_its_tasks_in_the_document_runs_on(
    redis_url: str, tmp_path: Path
) -> None:
    async with orchestrator(redis_url, tmp_path, fanout(2)) as orch:
        # Given a fan-out of 3 items, 2 at a time: one branch leased, one queued
        job_id = await orch.submit(
            orch.registry.by_name["fanout"], {"items": [1, 2, 3]}, client="c"
        )
        (first,) = await drain(orch, "w", "square", 1)
        key = orch.store.keys.job(job_id)
        assert await orch.store.redis.hexists(key, f"l:{first['task_id']}")
        # stored as a job written before its tasks were apart
        await store_as_before(orch, job_id)
        record = await orch.store.read_job(job_id)
        assert record is not None
        assert not record.tasks_apart
        assert len(record.doc["tasks"]) == 2
        # When the queued branch is leased, and every branch answered
        (second,) = await drain(orch, "w", "square", 1)
        assert second["params"]["x"] == 2
        assert await answer(orch, "w", first, data={"sq": 1}) == {"status": "accepted"}
        # (that change stored the tasks apart)
        fields = await orch.store.redis.hkeys(key)
        assert "leases" not in fields
        assert f"l:{second['task_id']}" in fields
        assert await answer(orch, "w", second, data={"sq": 4}) == {"status": "accepted"}
        (third,) = await drain(orch, "w", "square", 1)
        assert await answer(orch, "w", third, data={"sq": 9}) == {"status": "accepted"}
        # Then the job joins every result, in item order
        doc = await finished(orch, job_id)
        assert doc["status"] == "finished"
        assert doc["result"] == [{"sq": 1}, {"sq": 4}, {"sq": 9}]


# The for_each of test_flow_control, its tasks with a run timeout.
SLOW_BRANCH = fanout(40).replace(
    "max_concurrency: 40", "max_concurrency: 40\n      timeouts: {run: 2s}"
)


async def test_a_wide_job_times_out_its_silent_branch_after_the_others_answered(
    redis_url: str, tmp_path: Path
) -> None:
    async with orchestrator(redis_url, tmp_path, SLOW_BRANCH) as orch:
        # Given 40 branches in flight, all leased
        job_id = await orch.submit(
            orch.registry.by_name["fanout"], {"items": list(range(40))}, client="c"
        )
        taken = await drain(orch, "w", "square", 40)
        silent = max(taken, key=lambda t: t["params"]["x"])
        # When every branch but one is answered (changes that may only bring the job's
        # timer forward)
        others = [t for t in taken if t is not silent]
        for task in others:
            data = {"sq": task["params"]["x"] ** 2}
            assert await answer(orch, "w", task, data=data) == {"status": "accepted"}
        # Then the silent branch still times out at its run timeout and is tried again
        again = await orch.next_task("w", ("square",), 10)
        assert again is not None
        assert again["params"] == silent["params"]
        assert again["task_id"] != silent["task_id"]
        assert await answer(orch, "w", again, data={"sq": 39 * 39}) == {"status": "accepted"}
        # and the state joins every result
        doc = await finished(orch, job_id, 10)
        assert doc["result"] == [{"sq": x * x} for x in range(40)]
        history = await orch.history(job_id, None)
        assert history is not None
        timeouts = [e for e in history if e["event"] == "task_timeout"]
        assert [(e["task_id"], e["timeout"]) for e in timeouts] == [(silent["task_id"], "run")]
