"""The engine end to end, in process, against a real Redis and the embedded store."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from engine.blueprint.loader import load_blueprints
from engine.runtime.jobdoc import RuntimeSettings
from engine.runtime.orchestrator import Orchestrator, OrchestratorSettings
from engine.runtime.registry import Registry
from engine.store.client import Store

FAST = OrchestratorSettings(timer_interval_s=0.02)

LINEAR = """
blueprint: linear
start: work
states:
  work:
    task: echo
    params: {n: "${ initial_data.n }"}
    on: {success: done}
  done: {end: finished, output: {n: "${ steps.work.n }"}}
"""

RETRYING = """
blueprint: retrying
start: work
states:
  work:
    task: flaky
    retry: {max_attempts: 3, backoff: fixed, initial: 50ms, jitter: 0}
    on: {success: done, failure: broken}
  done: {end: finished}
  broken: {end: failed, error: {code: BROKEN, message: "gave up"}}
"""

TIMEOUTS = """
blueprint: timeouts
start: work
states:
  work:
    task: slow
    retry: {max_attempts: 1}
    timeouts: {dispatch: 300ms, run: 300ms, heartbeat: 200ms}
    on: {success: done, timeout: too_slow}
  done: {end: finished}
  too_slow: {end: failed, error: {code: TOO_SLOW}}
"""

LEASED = """
blueprint: leased
start: work
states:
  work:
    task: fragile
    retry: {max_attempts: 3, initial: 10ms}
    timeouts: {heartbeat: 300ms}
    on: {success: done}
  done: {end: finished}
"""

CHECKED = """
blueprint: checked
start: work
states:
  work:
    task: check
    output_schema: {type: object, required: [ok]}
    on: {success: done, out_of_stock: none_left}
  done: {end: finished}
  none_left: {end: failed, error: {code: OUT_OF_STOCK}}
"""

LOOP = """
blueprint: looping
limits: {max_transitions: 25}
start: again
states:
  again:
    set: {spin: true}
    next: decide
  decide:
    choice:
      - when: "initial_data.stop"
        goto: done
    otherwise: again
  done: {end: finished}
"""


@asynccontextmanager
async def orchestrator(
    url: str,
    tmp_path: Path,
    *texts: str,
    settings: RuntimeSettings | None = None,
    orch_settings: OrchestratorSettings = FAST,
) -> AsyncIterator[Orchestrator]:
    folder = tmp_path / f"bp{time.monotonic_ns()}"
    folder.mkdir()
    for i, text in enumerate(texts):
        (folder / f"b{i}.yaml").write_text(text)
    store = await Store.connect(url, partitions=4)
    orch = Orchestrator(
        store, Registry(load_blueprints([folder]), settings or RuntimeSettings()), orch_settings
    )
    await orch.start()
    try:
        yield orch
    finally:
        await orch.stop()
        await store.close()


async def run_task(
    orch: Orchestrator,
    worker: str,
    task_type: str,
    answer: Callable[[dict[str, Any]], dict[str, Any]],
) -> tuple[dict[str, Any], dict[str, Any]]:
    task = await orch.next_task(worker, (task_type,), 5)
    assert task is not None, f"no {task_type} task within 5 s"
    reply = await orch.submit_result(
        worker, {"job_id": task["job_id"], "task_id": task["task_id"], **answer(task)}
    )
    return task, reply


async def finished(orch: Orchestrator, job_id: str, wait_s: float = 5) -> dict[str, Any]:
    """The job once ended, as a plain dict (so tests can index `error` without checks)."""
    doc = await orch.wait_job(job_id, None, wait_s)
    assert doc is not None
    assert doc["status"] in ("finished", "failed", "cancelled"), doc["status"]
    return dict(doc)


async def events(orch: Orchestrator, job_id: str) -> list[str]:
    history = await orch.history(job_id, None)
    assert history is not None
    return [e["event"] for e in history]


async def test_a_job_runs_to_its_end_with_params_and_output(store_url: str, tmp_path: Path) -> None:
    async with orchestrator(store_url, tmp_path, LINEAR) as orch:
        bp = orch.registry.by_name["linear"]
        job_id = await orch.submit(bp, {"n": 7}, client="c")
        task, reply = await run_task(orch, "w1", "echo", lambda t: {"data": t["params"]})
        assert task["params"] == {"n": 7}
        assert reply == {"status": "accepted"}
        doc = await finished(orch, job_id)
        assert doc["status"] == "finished"
        assert doc["result"] == {"n": 7}
        assert await events(orch, job_id) == [
            "job_created",
            "state_entered",
            "task_queued",
            "task_picked_up",
            "task_result",
            "state_left",
            "state_entered",
            "job_finished",
        ]


async def test_results_are_accepted_once(store_url: str, tmp_path: Path) -> None:
    async with orchestrator(store_url, tmp_path, LINEAR) as orch:
        job_id = await orch.submit(orch.registry.by_name["linear"], {"n": 1}, client="c")
        task = await orch.next_task("w1", ("echo",), 5)
        assert task is not None
        result = {"job_id": job_id, "task_id": task["task_id"], "data": {"n": 1}}
        foreign = await orch.submit_result("w2", result)
        assert foreign == {"status": "ignored", "reason": "worker_mismatch"}
        stale = await orch.submit_result("w1", {**result, "task_id": f"{job_id}-99"})
        assert stale == {"status": "ignored", "reason": "stale_task"}
        replies = await asyncio.gather(*(orch.submit_result("w1", result) for _ in range(5)))
        assert sorted(r["status"] for r in replies) == ["accepted"] + ["ignored"] * 4
        assert (await finished(orch, job_id))["status"] == "finished"
        late = await orch.submit_result("w1", result)
        assert late == {"status": "ignored", "reason": "job_finished"}
        unknown = await orch.submit_result("w1", {**result, "job_id": "0" * 32})
        assert unknown == {"status": "ignored", "reason": "job_not_found"}


async def test_transient_errors_are_retried_then_succeed(store_url: str, tmp_path: Path) -> None:
    async with orchestrator(store_url, tmp_path, RETRYING) as orch:
        job_id = await orch.submit(orch.registry.by_name["retrying"], {}, client="c")
        transient = {"status": "failure", "error": {"code": "TRANSIENT_ERROR", "message": "flap"}}
        first, _ = await run_task(orch, "w1", "flaky", lambda t: transient)
        second, _ = await run_task(orch, "w1", "flaky", lambda t: {"data": {"ok": True}})
        assert first["task_id"] != second["task_id"]
        assert second["metadata"]["attempt"] == 2
        doc = await finished(orch, job_id)
        assert doc["status"] == "finished"
        assert "task_retry_scheduled" in await events(orch, job_id)


async def test_exhausted_retries_follow_the_failure_transition(
    store_url: str, tmp_path: Path
) -> None:
    async with orchestrator(store_url, tmp_path, RETRYING) as orch:
        job_id = await orch.submit(orch.registry.by_name["retrying"], {}, client="c")
        transient = {"status": "failure", "error": {"code": "TRANSIENT_ERROR", "message": "flap"}}
        for _ in range(3):
            await run_task(orch, "w1", "flaky", lambda t: transient)
        doc = await finished(orch, job_id)
        assert doc["status"] == "failed"
        assert doc["state"] == "broken"
        assert doc["error"]["code"] == "BROKEN"
        assert doc["steps"]["work"]["error"]["code"] == "TRANSIENT_ERROR"
        assert doc["steps"]["work"]["error"]["attempt"] == 3


async def test_permanent_errors_are_not_retried(store_url: str, tmp_path: Path) -> None:
    async with orchestrator(store_url, tmp_path, RETRYING) as orch:
        job_id = await orch.submit(orch.registry.by_name["retrying"], {}, client="c")
        permanent = {"status": "failure", "error": {"code": "PERMANENT_ERROR", "message": "no"}}
        await run_task(orch, "w1", "flaky", lambda t: permanent)
        doc = await finished(orch, job_id)
        assert doc["state"] == "broken"
        assert "task_retry_scheduled" not in await events(orch, job_id)


async def test_a_job_without_workers_waits_rather_than_failing(
    store_url: str, tmp_path: Path
) -> None:
    async with orchestrator(store_url, tmp_path, LINEAR) as orch:
        job_id = await orch.submit(orch.registry.by_name["linear"], {"n": 1}, client="c")
        # No timer is set for it (tests/engine/test_rules.py checks the rule on a fake clock)
        doc = await orch.get_job(job_id, None)
        assert doc is not None
        assert doc["status"] == "queued"
        await run_task(orch, "late-worker", "echo", lambda t: {"data": {"n": 1}})
        assert (await finished(orch, job_id))["status"] == "finished"


async def test_dispatch_timeout_when_no_worker_takes_the_task(
    store_url: str, tmp_path: Path
) -> None:
    async with orchestrator(store_url, tmp_path, TIMEOUTS) as orch:
        started = time.monotonic()
        job_id = await orch.submit(orch.registry.by_name["timeouts"], {}, client="c")
        doc = await finished(orch, job_id)
        assert time.monotonic() - started >= 0.3
        assert doc["state"] == "too_slow"
        assert doc["steps"]["work"]["error"]["code"] == "DISPATCH_TIMEOUT"
        # the queue entry is gone: a worker arriving now gets nothing
        assert await orch.next_task("w1", ("slow",), 0.2) is None


async def test_run_timeout_when_the_worker_never_answers(store_url: str, tmp_path: Path) -> None:
    async with orchestrator(store_url, tmp_path, TIMEOUTS) as orch:
        job_id = await orch.submit(orch.registry.by_name["timeouts"], {}, client="c")
        await orch.register_worker("silent", {})
        task = await orch.next_task("silent", ("slow",), 5)
        assert task is not None
        for _ in range(6):  # the worker stays alive but never answers
            await orch.heartbeat("silent", [task["task_id"]], 1000)
            await asyncio.sleep(0.1)
        doc = await finished(orch, job_id)
        assert doc["state"] == "too_slow"
        assert doc["steps"]["work"]["error"]["code"] == "TIMEOUT"
        late = await orch.submit_result("silent", {"job_id": job_id, "task_id": task["task_id"]})
        assert late["status"] == "ignored"


async def test_a_dead_workers_task_is_leased_again_and_finishes_once(
    store_url: str, tmp_path: Path
) -> None:
    async with orchestrator(store_url, tmp_path, LEASED) as orch:
        job_id = await orch.submit(orch.registry.by_name["leased"], {}, client="c")
        await orch.register_worker("doomed", {})
        await orch.heartbeat("doomed", [], 100)  # its liveness lasts 100 ms, then it "dies"
        lost = await orch.next_task("doomed", ("fragile",), 5)
        assert lost is not None
        again, reply = await run_task(orch, "healthy", "fragile", lambda t: {"data": {}})
        assert again["task_id"] != lost["task_id"]
        assert reply == {"status": "accepted"}
        doc = await finished(orch, job_id)
        assert doc["status"] == "finished"
        late = await orch.submit_result("doomed", {"job_id": job_id, "task_id": lost["task_id"]})
        assert late["status"] == "ignored"
        names = await events(orch, job_id)
        assert names.count("job_finished") == 1
        assert "task_timeout" in names


async def test_output_schema_and_custom_statuses(store_url: str, tmp_path: Path) -> None:
    async with orchestrator(store_url, tmp_path, CHECKED) as orch:
        bp = orch.registry.by_name["checked"]
        bad = await orch.submit(bp, {}, client="c")
        await run_task(orch, "w", "check", lambda t: {"data": {"nope": 1}})
        doc = await finished(orch, bad)
        assert doc["status"] == "failed"
        assert doc["error"]["code"] == "INVALID_OUTPUT"
        assert any("ok" in line for line in doc["error"]["details"])

        custom = await orch.submit(bp, {}, client="c")
        await run_task(orch, "w", "check", lambda t: {"status": "out_of_stock", "data": {}})
        assert (await finished(orch, custom))["error"]["code"] == "OUT_OF_STOCK"

        undeclared = await orch.submit(bp, {}, client="c")
        await run_task(orch, "w", "check", lambda t: {"status": "mystery", "data": {}})
        assert (await finished(orch, undeclared))["error"]["code"] == "UNDECLARED_STATUS"


async def test_a_runaway_loop_is_stopped(store_url: str, tmp_path: Path) -> None:
    async with orchestrator(store_url, tmp_path, LOOP) as orch:
        job_id = await orch.submit(orch.registry.by_name["looping"], {"stop": False}, client="c")
        doc = await finished(orch, job_id)
        assert doc["error"]["code"] == "MAX_TRANSITIONS"
        ok = await orch.submit(orch.registry.by_name["looping"], {"stop": True}, client="c")
        assert (await finished(orch, ok))["status"] == "finished"


async def test_cancel_a_queued_and_a_running_job(store_url: str, tmp_path: Path) -> None:
    async with orchestrator(store_url, tmp_path, LINEAR) as orch:
        bp = orch.registry.by_name["linear"]
        queued = await orch.submit(bp, {"n": 1}, client="c")
        cancelled = await orch.cancel(queued, "c")
        assert isinstance(cancelled, dict)
        assert cancelled["status"] == "cancelled"
        assert await orch.next_task("w", ("echo",), 0.2) is None

        running = await orch.submit(bp, {"n": 2}, client="c")
        await orch.register_worker("w", {})
        task = await orch.next_task("w", ("echo",), 5)
        assert task is not None
        await orch.cancel(running, "c")
        known, cancels = await orch.heartbeat("w", [task["task_id"]], 1000)
        assert known
        assert cancels == [task["task_id"]]
        late = await orch.submit_result("w", {"job_id": running, "task_id": task["task_id"]})
        assert late == {"status": "ignored", "reason": "job_cancelled"}
        doc = await orch.get_job(running, "c")
        assert doc is not None
        assert doc["status"] == "cancelled"
        assert await orch.cancel(running, "c") is not None  # already ended: Ignored
        assert await orch.cancel(running, "someone-else") is None


async def test_a_job_keeps_the_blueprint_version_it_started_with(
    redis_url: str, tmp_path: Path
) -> None:
    async with orchestrator(redis_url, tmp_path, LINEAR) as old:
        job_id = await old.submit(old.registry.by_name["linear"], {"n": 3}, client="c")
    edited = LINEAR.replace('{n: "${ steps.work.n }"}', "{edited: true}")
    async with orchestrator(redis_url, tmp_path, edited) as new:
        await run_task(new, "w", "echo", lambda t: {"data": {"n": 3}})
        doc = await finished(new, job_id)
        assert doc["result"] == {"n": 3}  # the pinned version's output, not {"edited": true}
        fresh = await new.submit(new.registry.by_name["linear"], {"n": 4}, client="c")
        await run_task(new, "w", "echo", lambda t: {"data": {"n": 4}})
        assert (await finished(new, fresh))["result"] == {"edited": True}


async def test_two_orchestrators_share_one_redis(redis_url: str, tmp_path: Path) -> None:
    async with (
        orchestrator(redis_url, tmp_path, LINEAR) as a,
        orchestrator(redis_url, tmp_path, LINEAR) as b,
    ):
        jobs = [
            await a.submit(a.registry.by_name["linear"], {"n": i}, client="c") for i in range(20)
        ]

        async def worker(orch: Orchestrator, name: str) -> int:
            done = 0
            while True:
                task = await orch.next_task(name, ("echo",), 0.5)
                if task is None:
                    return done
                # results go to the *other* orchestrator half of the time
                target = a if done % 2 else b
                reply = await target.submit_result(
                    name,
                    {"job_id": task["job_id"], "task_id": task["task_id"], "data": task["params"]},
                )
                assert reply == {"status": "accepted"}
                done += 1

        counts = await asyncio.gather(worker(a, "wa"), worker(b, "wb"), worker(b, "wb2"))
        assert sum(counts) == 20
        for i, job_id in enumerate(jobs):
            doc = await finished(b, job_id)
            assert doc["result"] == {"n": i}


async def test_the_job_graph_highlights_the_path_taken(store_url: str, tmp_path: Path) -> None:
    from engine.runtime.jobgraph import job_dot

    async with orchestrator(store_url, tmp_path, CHECKED) as orch:
        bp = orch.registry.by_name["checked"]
        job_id = await orch.submit(bp, {}, client="c")
        doc = await orch.get_job(job_id, "c")
        assert doc is not None
        running = job_dot(bp, doc, await orch.history(job_id, "c") or [])
        assert 'xlabel="current"' in running
        await run_task(orch, "w", "check", lambda t: {"status": "out_of_stock", "data": {}})
        ended = job_dot(bp, await finished(orch, job_id), await orch.history(job_id, "c") or [])
        assert "current" not in ended
        taken = [line for line in ended.splitlines() if "->" in line and "#1565c0" in line]
        assert any('"work" -> "none_left"' in line for line in taken)
        assert not any('"work" -> "done"' in line for line in taken)


async def test_a_task_leased_to_a_vanished_poll_is_put_back(store_url: str, tmp_path: Path) -> None:
    async with orchestrator(store_url, tmp_path, LINEAR) as orch:
        job_id = await orch.submit(orch.registry.by_name["linear"], {"n": 5}, client="c")
        lost = await orch.next_task("w1", ("echo",), 5)
        assert lost is not None
        assert await orch.release("w1", lost) == "released"
        assert await orch.release("w1", lost) == "stale_task"
        again, reply = await run_task(orch, "w2", "echo", lambda t: {"data": t["params"]})
        assert again["task_id"] != lost["task_id"]
        assert again["metadata"]["attempt"] == 1
        assert reply == {"status": "accepted"}
        assert (await finished(orch, job_id))["result"] == {"n": 5}


async def test_listing_pages_through_jobs_created_in_the_same_millisecond(
    store_url: str, tmp_path: Path
) -> None:
    async with orchestrator(store_url, tmp_path, LINEAR) as orch:
        bp = orch.registry.by_name["linear"]
        submitted = set()
        for n in range(7):
            submitted.add(await orch.submit(bp, {"n": n}, client="pager"))
        # force identical creation times, the case a millisecond cursor would skip
        index = orch.store.keys.client_jobs
        for job_id in submitted:
            key = index(orch.store.keys.partition(job_id), "pager")
            await orch.store.redis.zadd(key, {job_id: 1_800_000_000_000})
        seen: list[str] = []
        cursor = None
        while True:
            page, cursor = await orch.list_jobs(
                "pager", status=None, blueprint=None, limit=2, cursor=cursor
            )
            seen += [doc["id"] for doc in page]
            if cursor is None:
                break
        assert sorted(seen) == sorted(submitted)
        assert len(seen) == len(set(seen))
        with pytest.raises(ValueError, match="cursor"):
            await orch.list_jobs("pager", status=None, blueprint=None, limit=2, cursor="x")
