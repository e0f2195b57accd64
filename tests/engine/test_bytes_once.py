"""A job's bytes are written once (issue 18): each step output is stored as a field of its
own when it is produced, and a later change of the job does not write it again, however
large it is. Counted as the size of what each commit sends to Redis (the script's
arguments), and as what the job's hash keeps once it ended.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from engine.jsonutil import dumps
from engine.runtime.orchestrator import Orchestrator
from engine.runtime.outputs import Kept
from engine.runtime.recent import RecentJobs
from tests.engine.test_flow_control import answer, drain
from tests.engine.test_orchestrator import finished, orchestrator
from tests.engine.test_wide_fanout import Sent

CHAIN = """
blueprint: chain
start: a
states:
  a: {task: echo, params: {pad: "${ initial_data.pad }"}, on: {success: b}}
  b: {task: echo, params: {pad: "${ steps.a.pad }"}, on: {success: c}}
  c: {task: echo, params: {pad: "${ state_history.pad }"}, on: {success: d}}
  d: {task: echo, params: {pad: "${ steps.c.pad }"}, on: {success: done}}
  done:
    end: finished
    output: {same: "${ steps.a.pad == steps.d.pad }", size: "${ length(steps.b.pad) }"}
"""

LOOP = """
blueprint: loop
start: tick
states:
  tick:
    set: {ticks: "${ [state_history.ticks || `[]`, [length(state_history.ticks || `[]`)]][] }"}
    next: check
  check:
    choice:
      - when: "length(state_history.ticks) >= initial_data.rounds"
        goto: done
    otherwise: work
  work: {task: echo, params: {n: "${ length(state_history.ticks) }"}, on: {success: tick}}
  done: {end: finished, output: {ticks: "${ state_history.ticks }", n: "${ steps.work.n }"}}
"""


async def run_chain(
    orch: Orchestrator, size: int, monkeypatch: pytest.MonkeyPatch
) -> tuple[str, list[int], dict[str, Any]]:
    """A CHAIN job over a `size`-character string, each task echoing its params: the job id,
    the bytes each result's commit sent, and the finished job."""
    job_id = await orch.submit(orch.registry.by_name["chain"], {"pad": "x" * size}, client="c")
    sent = Sent(orch.store, monkeypatch)
    per_result = []
    for _ in range(4):
        (task,) = await drain(orch, "w", "echo", 1)
        sent.sizes.clear()
        assert await answer(orch, "w", task, data=task["params"]) == {"status": "accepted"}
        per_result.append(sum(sent.sizes))
    return job_id, per_result, await finished(orch, job_id)


async def job_fields(orch: Orchestrator, job_id: str) -> dict[str, str]:
    raw = await orch.store.redis.hgetall(orch.store.keys.job(job_id))
    return {str(k): v.decode() if isinstance(v, bytes) else str(v) for k, v in raw.items()}


async def test_a_change_writes_what_it_produced_not_the_earlier_outputs(
    store_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # given a chain of four echo states, each passing on a 200 KB string
    size = 200_000
    async with orchestrator(store_url, tmp_path, CHAIN) as orch:
        job_id, per_result, doc = await run_chain(orch, size, monkeypatch)
        fields = await job_fields(orch, job_id)
    assert doc["result"] == {"same": True, "size": size}
    # then each result's commit sends its output and the next task's payload, about 2 *
    # 200 KB, whatever came before: not the earlier outputs again (the 4th result sent
    # 5 copies when the document carried every output and the merged state_history)
    first, *later = per_result[:3]
    assert size * 2 < first < size * 2 + 10_000, per_result
    assert all(abs(n - first) < 1_000 for n in later), per_result
    assert size < per_result[3] < size + 10_000, per_result  # the last queues no task
    # and the ended job keeps the input once and each output once: the document holds
    # bookkeeping only, and the tasks' payloads (copies) are emptied
    assert len(fields["doc"]) < 5_000
    outputs = {name: value for name, value in fields.items() if name.startswith("o:")}
    assert sorted(len(v) for v in outputs.values()) == [size + 10] * 4
    assert all(value == "" for name, value in fields.items() if name.startswith("p:"))
    assert sum(map(len, fields.values())) < 5 * size + 10_000


async def test_the_job_read_again_has_every_output(store_url: str, tmp_path: Path) -> None:
    # given a chain job part-way, forgotten by the orchestrator that ran it
    async with orchestrator(store_url, tmp_path, CHAIN) as orch:
        job_id = await orch.submit(orch.registry.by_name["chain"], {"pad": "abc"}, client="c")
        for _ in range(2):
            (task,) = await drain(orch, "w", "echo", 1)
            await answer(orch, "w", task, data={**task["params"], "at": task["task_id"]})
        orch.recent.clear()
        # when it is read from Redis
        record = await orch.store.read_job(job_id)
        assert record is not None
        # then steps and state_history are as the outputs made them
        a, b = (record.doc["steps"][s] for s in "ab")
        assert (a["pad"], b["pad"]) == ("abc", "abc")
        assert record.doc["state_history"] == {"pad": "abc", "at": b["at"]}
        assert list(record.doc["steps"]) == ["a", "b"]
        # and the job goes on from there to its end
        for _ in range(2):
            (task,) = await drain(orch, "w", "echo", 1)
            await answer(orch, "w", task, data=task["params"])
        assert (await finished(orch, job_id))["result"] == {"same": True, "size": 3}


async def test_a_loop_keeps_a_bounded_number_of_outputs(store_url: str, tmp_path: Path) -> None:
    # given a loop that records the same keys on each of 30 rounds (a set and a task)
    rounds = 30
    async with orchestrator(store_url, tmp_path, LOOP) as orch:
        job_id = await orch.submit(orch.registry.by_name["loop"], {"rounds": rounds}, client="c")
        for _ in range(rounds - 1):  # (the first tick comes before any task)
            (task,) = await drain(orch, "w", "echo", 1)
            await answer(orch, "w", task, data=task["params"])
            orch.recent.clear()  # every other change starts from a read
        doc = await finished(orch, job_id)
        fields = await job_fields(orch, job_id)
    # then it ended as the merged state_history says
    assert doc["result"] == {"ticks": list(range(rounds)), "n": rounds - 1}
    # and the hash keeps the outputs still referred to, not one per round: each state's
    # last, and the first of each key merged into state_history (which fixes its order)
    outputs = [name for name in fields if name.startswith("o:")]
    assert len(outputs) <= 4, outputs


async def test_a_document_that_carries_its_outputs_is_read_and_moved_apart(
    redis_url: str, tmp_path: Path
) -> None:
    # given a job stored as before outputs (and tasks) were stored apart: steps,
    # state_history and the active tasks in its document, its leases in one field, no
    # output or task fields
    async with orchestrator(redis_url, tmp_path, CHAIN) as orch:
        job_id = await orch.submit(orch.registry.by_name["chain"], {"pad": "abc"}, client="c")
        (task,) = await drain(orch, "w", "echo", 1)
        await answer(orch, "w", task, data={"pad": "abc", "first": 1})
        key = orch.store.keys.job(job_id)
        fields = await job_fields(orch, job_id)
        record = await orch.store.read_job(job_id)
        assert record is not None
        bookkeeping = ("initial_data", "outs", "layers", "oseq")
        old = {k: v for k, v in record.doc.items() if k not in bookkeeping}
        await orch.store.redis.hset(
            key, mapping={"doc": dumps(old), "leases": dumps(record.leases)}
        )
        apart = [n for n in fields if n.startswith(("o:", "t:", "l:"))]
        await orch.store.redis.hdel(key, *apart)
        orch.recent.clear()
        # when it is read, then it has its steps
        again = await orch.store.read_job(job_id)
        assert again is not None
        assert again.doc["steps"] == {"a": {"pad": "abc", "first": 1}}
        # and it runs to its end, its outputs stored apart from its next change on
        for _ in range(3):
            (task,) = await drain(orch, "w", "echo", 1)
            await answer(orch, "w", task, data=task["params"])
        assert (await finished(orch, job_id))["result"] == {"same": True, "size": 3}
        record = await orch.store.read_job(job_id)
        assert record is not None
        assert record.doc["state_history"] == {"pad": "abc", "first": 1}
        assert "steps" not in (await job_fields(orch, job_id))["doc"]


def test_recent_jobs_count_the_outputs_they_keep_in_their_bytes() -> None:
    # given entries of small documents that keep 1 MB of outputs each, 8 MB allowed
    recent = RecentJobs(max_bytes=8 << 20)
    for i in range(40):
        kept = Kept({0: "x" * 1_000_000}, {0: 1_000_002})
        recent.remember(f"job{i}", 1, '{"outs": {"a": 0}, "layers": []}', {}, False, kept=kept)
        assert recent.bytes <= recent.max_bytes
    # then only as many stay as fit (the count alone would have kept all 40)
    assert len(recent) == 8  # 8 MiB / (1 MB and a small document)
    record = recent.record("job39")
    assert record is not None
    assert record.doc["steps"] == {"a": "x" * 1_000_000}
    assert recent.record("job0") is None
