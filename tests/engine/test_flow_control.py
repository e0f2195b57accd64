"""Parallel, approval and subflow states, in process, on a real Redis and memory://."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.runtime.jobdoc import Ignored, RuntimeSettings
from engine.runtime.orchestrator import Orchestrator
from tests.engine.test_orchestrator import events, finished, orchestrator, run_task

FANOUT = """
blueprint: fanout
start: fan
states:
  fan:
    parallel:
      for_each: initial_data.items
      task: square
      params: {x: "${ item }", i: "${ index }"}
      max_concurrency: {limit}
      on_branch_failure: {mode}
    on: {success: done, failure: broken}
  done: {end: finished, output: "${ steps.fan }"}
  broken: {end: failed}
"""

BRANCHES = """
blueprint: branches
start: both
states:
  both:
    parallel:
      branches:
        left: {task: left, params: {side: L}}
        right: {task: right, params: {side: R}}
    on: {success: done}
  done: {end: finished, output: "${ steps.both }"}
"""

APPROVAL = """
blueprint: approve
start: review
states:
  review:
    approval: {message: "ok ${ initial_data.amount }?", timeout: {timeout}}
    on: {approve: yes, reject: no, timeout: late}
  yes: {end: finished}
  no: {end: failed, error: {code: REJECTED}}
  late: {end: failed, error: {code: LATE}}
"""

PARENT = """
blueprint: parent
start: call
states:
  call:
    subflow: {blueprint: child, input: {n: "${ initial_data.n }"}}
    on: {success: done, failure: broken}
  done: {end: finished, output: {child: "${ steps.call }"}}
  broken: {end: failed, error: {code: CHILD_FAILED}}
"""

CHILD = """
blueprint: child
start: work
states:
  work:
    task: child_work
    params: {n: "${ initial_data.n }"}
    on: {success: done, failure: broken}
  done: {end: finished, output: {doubled: "${ steps.work.doubled }"}}
  broken: {end: failed, error: {code: CHILD_BROKE}}
"""


def fanout(limit: int = 100, mode: str = "fail_fast") -> str:
    return FANOUT.replace("{limit}", str(limit)).replace("{mode}", mode)


async def drain(
    orch: Orchestrator, worker: str, task_type: str, count: int
) -> list[dict[str, Any]]:
    taken: list[dict[str, Any]] = []
    while len(taken) < count:
        task = await orch.next_task(worker, (task_type,), 2)
        assert task is not None, f"only {len(taken)} of {count} {task_type} tasks came"
        taken.append(task)
    return taken


async def answer(
    orch: Orchestrator, worker: str, task: dict[str, Any], **result: Any
) -> dict[str, Any]:
    return await orch.submit_result(
        worker, {"job_id": task["job_id"], "task_id": task["task_id"], **result}
    )


async def test_for_each_joins_results_in_item_order(store_url: str, tmp_path: Path) -> None:
    async with orchestrator(store_url, tmp_path, fanout()) as orch:
        job_id = await orch.submit(
            orch.registry.by_name["fanout"], {"items": [3, 1, 2]}, client="c"
        )
        taken = await drain(orch, "w", "square", 3)
        for task in reversed(taken):  # results arrive in the opposite order
            x = task["params"]["x"]
            assert await answer(orch, "w", task, data={"sq": x * x}) == {"status": "accepted"}
        doc = await finished(orch, job_id)
        assert doc["result"] == [{"sq": 9}, {"sq": 1}, {"sq": 4}]
        assert (await events(orch, job_id)).count("parallel_joined") == 1


async def test_static_branches_join_by_name(store_url: str, tmp_path: Path) -> None:
    async with orchestrator(store_url, tmp_path, BRANCHES) as orch:
        job_id = await orch.submit(orch.registry.by_name["branches"], {}, client="c")
        left = await orch.next_task("w", ("left",), 2)
        right = await orch.next_task("w", ("right",), 2)
        assert left is not None
        assert right is not None
        await answer(orch, "w", right, data={"r": 1})
        await answer(orch, "w", left, data={"l": 1})
        assert (await finished(orch, job_id))["result"] == {"left": {"l": 1}, "right": {"r": 1}}


async def test_max_concurrency_limits_branches_in_flight(store_url: str, tmp_path: Path) -> None:
    async with orchestrator(store_url, tmp_path, fanout(limit=2)) as orch:
        job_id = await orch.submit(
            orch.registry.by_name["fanout"], {"items": list(range(5))}, client="c"
        )
        first = await drain(orch, "w", "square", 2)
        assert await orch.next_task("w", ("square",), 0.3) is None  # a third must wait
        for task in first:
            await answer(orch, "w", task, data={"sq": 0})
        for batch in (2, 1):  # never more than two in flight
            taken = await drain(orch, "w", "square", batch)
            assert await orch.next_task("w", ("square",), 0.1) is None
            for task in taken:
                await answer(orch, "w", task, data={"sq": 0})
        assert (await finished(orch, job_id))["status"] == "finished"


async def test_fail_fast_cancels_the_other_branches(store_url: str, tmp_path: Path) -> None:
    async with orchestrator(store_url, tmp_path, fanout(limit=2)) as orch:
        job_id = await orch.submit(
            orch.registry.by_name["fanout"], {"items": [1, 2, 3]}, client="c"
        )
        await orch.register_worker("w", {})
        first, second = await drain(orch, "w", "square", 2)
        failure = {"code": "PERMANENT_ERROR", "message": "bad item"}
        await answer(orch, "w", first, status="failure", error=failure)
        doc = await finished(orch, job_id)
        assert doc["state"] == "broken"
        assert doc["steps"]["fan"]["error"]["branch"] == first["params"]["i"]
        _, cancels = await orch.heartbeat("w", [second["task_id"]], 1000)
        assert cancels == [second["task_id"]]
        assert (await answer(orch, "w", second, data={}))["status"] == "ignored"
        assert await orch.next_task("w", ("square",), 0.2) is None  # the third never starts


async def test_collect_keeps_going_and_reports_errors(store_url: str, tmp_path: Path) -> None:
    async with orchestrator(store_url, tmp_path, fanout(mode="collect")) as orch:
        job_id = await orch.submit(orch.registry.by_name["fanout"], {"items": [1, 2]}, client="c")
        one, two = sorted(await drain(orch, "w", "square", 2), key=lambda t: t["params"]["i"])
        await answer(
            orch, "w", one, status="failure", error={"code": "PERMANENT_ERROR", "message": "x"}
        )
        await answer(orch, "w", two, data={"sq": 4})
        doc = await finished(orch, job_id)
        assert doc["status"] == "finished"
        assert doc["result"][0]["error"]["code"] == "PERMANENT_ERROR"
        assert doc["result"][1] == {"sq": 4}


async def test_an_empty_list_joins_at_once(store_url: str, tmp_path: Path) -> None:
    async with orchestrator(store_url, tmp_path, fanout()) as orch:
        job_id = await orch.submit(orch.registry.by_name["fanout"], {"items": []}, client="c")
        assert (await finished(orch, job_id))["result"] == []


async def test_a_thousand_branches(redis_url: str, tmp_path: Path) -> None:
    async with orchestrator(redis_url, tmp_path, fanout(limit=1000)) as orch:
        items = list(range(1000))
        job_id = await orch.submit(orch.registry.by_name["fanout"], {"items": items}, client="c")

        async def work(name: str) -> None:
            while True:
                task = await orch.next_task(name, ("square",), 1)
                if task is None:
                    return
                x = task["params"]["x"]
                assert await answer(orch, name, task, data={"sq": x * x}) == {"status": "accepted"}

        await asyncio.gather(*(work(f"w{i}") for i in range(8)))
        doc = await finished(orch, job_id, 30)
        assert doc["result"] == [{"sq": x * x} for x in items]


@settings(max_examples=6, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    order=st.permutations(list(range(6))), receivers=st.lists(st.booleans(), min_size=6, max_size=6)
)
@pytest.mark.timeout(300)
def test_join_is_exactly_once_whatever_the_order_and_orchestrator(
    redis_url: str, tmp_path: Path, order: list[int], receivers: list[bool]
) -> None:
    """Results of 6 branches arrive in any order at either of two orchestrators."""

    async def scenario() -> None:
        text = fanout()
        async with (
            orchestrator(redis_url, tmp_path, text) as a,
            orchestrator(redis_url, tmp_path, text) as b,
        ):
            job_id = await a.submit(
                a.registry.by_name["fanout"], {"items": list(range(6))}, client="c"
            )
            taken = sorted(await drain(a, "w", "square", 6), key=lambda t: t["params"]["i"])
            await asyncio.gather(
                *(
                    answer(
                        b if receivers[i] else a, "w", taken[i], data={"i": taken[i]["params"]["i"]}
                    )
                    for i in order
                )
            )
            doc = await finished(a, job_id)
            assert doc["result"] == [{"i": i} for i in range(6)]
            assert (await events(b, job_id)).count("parallel_joined") == 1

    asyncio.run(scenario())


async def test_approval_decided_by_the_owner(store_url: str, tmp_path: Path) -> None:
    async with orchestrator(store_url, tmp_path, APPROVAL.replace("{timeout}", "1h")) as orch:
        bp = orch.registry.by_name["approve"]
        job_id = await orch.submit(bp, {"amount": 5}, client="owner")
        doc = await orch.get_job(job_id, "owner")
        assert doc is not None
        assert doc["status"] == "waiting_for_human"
        assert doc["approval"] is not None
        assert doc["approval"]["message"] == "ok 5?"
        assert await orch.decide(job_id, "intruder", "approve") is None
        unknown = await orch.decide(job_id, "owner", "maybe")
        assert unknown == Ignored("unknown_decision")
        await orch.decide(job_id, "owner", "approve")
        assert (await finished(orch, job_id))["status"] == "finished"
        again = await orch.decide(job_id, "owner", "reject")
        assert again == Ignored("not_waiting_for_approval")


async def test_approval_link_is_single_use_and_unforgeable(store_url: str, tmp_path: Path) -> None:
    async with orchestrator(store_url, tmp_path, APPROVAL.replace("{timeout}", "1h")) as orch:
        job_id = await orch.submit(orch.registry.by_name["approve"], {"amount": 5}, client="owner")
        doc = await orch.get_job(job_id, None)
        assert doc is not None
        assert doc["approval"] is not None
        token = doc["approval"]["token"]
        assert len(token) >= 32
        forged = await orch.decide(job_id, None, "approve", token="0" * len(token))
        assert forged == Ignored("invalid_token")
        await orch.decide(job_id, None, "reject", token=token)
        assert (await finished(orch, job_id))["error"]["code"] == "REJECTED"
        reused = await orch.decide(job_id, None, "approve", token=token)
        assert isinstance(reused, Ignored)


async def test_approval_timeout_takes_its_transition(store_url: str, tmp_path: Path) -> None:
    async with orchestrator(store_url, tmp_path, APPROVAL.replace("{timeout}", "200ms")) as orch:
        job_id = await orch.submit(orch.registry.by_name["approve"], {"amount": 5}, client="c")
        assert (await finished(orch, job_id))["error"]["code"] == "LATE"


async def test_a_decision_cannot_forge_a_worker_result(store_url: str, tmp_path: Path) -> None:
    async with orchestrator(store_url, tmp_path, CHILD) as orch:
        job_id = await orch.submit(orch.registry.by_name["child"], {"n": 1}, client="c")
        assert await orch.decide(job_id, "c", "success") == Ignored("not_waiting_for_approval")
        doc = await orch.get_job(job_id, "c")
        assert doc is not None
        assert doc["status"] == "queued"


async def test_subflow_parent_resumes_once_with_the_childs_output(
    store_url: str, tmp_path: Path
) -> None:
    async with orchestrator(store_url, tmp_path, PARENT, CHILD) as orch:
        job_id = await orch.submit(orch.registry.by_name["parent"], {"n": 21}, client="c")
        task, _ = await run_task(
            orch, "w", "child_work", lambda t: {"data": {"doubled": t["params"]["n"] * 2}}
        )
        doc = await finished(orch, job_id)
        assert doc["result"] == {"child": {"doubled": 42}}
        names = await events(orch, job_id)
        assert names.count("subflow_ended") == 1
        child = await orch.get_job(task["job_id"], "c")
        assert child is not None
        assert child["parent"] is not None
        assert child["parent"]["job_id"] == job_id


async def test_subflow_failure_and_child_on_another_orchestrator(
    redis_url: str, tmp_path: Path
) -> None:
    async with (
        orchestrator(redis_url, tmp_path, PARENT, CHILD) as a,
        orchestrator(redis_url, tmp_path, PARENT, CHILD) as b,
    ):
        job_id = await a.submit(a.registry.by_name["parent"], {"n": 1}, client="c")
        task = await b.next_task("w", ("child_work",), 2)
        assert task is not None
        failure = {"code": "PERMANENT_ERROR", "message": "no"}
        await b.submit_result(
            "w",
            {
                "job_id": task["job_id"],
                "task_id": task["task_id"],
                "status": "failure",
                "error": failure,
            },
        )
        doc = await finished(a, job_id)
        assert doc["error"]["code"] == "CHILD_FAILED"
        assert doc["steps"]["call"]["error"]["child_job_id"] == task["job_id"]
        assert (await events(a, job_id)).count("subflow_ended") == 1


async def test_subflow_depth_is_limited(store_url: str, tmp_path: Path) -> None:
    shallow = RuntimeSettings(max_subflow_depth=0)
    async with orchestrator(store_url, tmp_path, PARENT, CHILD, settings=shallow) as orch:
        job_id = await orch.submit(orch.registry.by_name["parent"], {"n": 1}, client="c")
        doc = await finished(orch, job_id)
        assert doc["steps"]["call"]["error"]["code"] == "SUBFLOW_DEPTH"


async def test_cancel_in_every_waiting_status(store_url: str, tmp_path: Path) -> None:
    wait = "blueprint: waiting\nstart: w\nstates:\n  w: {wait: 1h, next: d}\n  d: {end: finished}\n"
    texts = [fanout(limit=2), APPROVAL.replace("{timeout}", "1h"), PARENT, CHILD, wait]
    async with orchestrator(store_url, tmp_path, *texts) as orch:
        reg = orch.registry.by_name
        jobs = {
            "running": await orch.submit(reg["fanout"], {"items": [1, 2, 3]}, client="c"),
            "waiting_for_human": await orch.submit(reg["approve"], {"amount": 1}, client="c"),
            "subflow": await orch.submit(reg["parent"], {"n": 1}, client="c"),
            "waiting": await orch.submit(reg["waiting"], {}, client="c"),
        }
        await drain(orch, "w", "square", 2)
        for job_id in jobs.values():
            outcome = await orch.cancel(job_id, "c")
            assert isinstance(outcome, dict)
            assert outcome["status"] == "cancelled"
        parent = await orch.get_job(jobs["subflow"], "c")
        assert parent is not None
        child_id = [
            e
            for e in await orch.history(jobs["subflow"], "c") or []
            if e["event"] == "subflow_started"
        ]
        assert child_id
        child = await orch.wait_job(child_id[0]["child_job_id"], "c", 5)
        assert child is not None
        assert child["status"] == "cancelled"
        assert await orch.next_task("w", ("square", "child_work"), 0.3) is None


def test_a_decision_after_the_approval_timeout_takes_the_timeout() -> None:
    import random as stdlib_random

    from engine.blueprint.loader import load_blueprint_text
    from engine.runtime.jobdoc import new_job
    from engine.runtime.machine import Machine

    bp = load_blueprint_text(APPROVAL.replace("{timeout}", "1m"))
    machine = Machine(bp, RuntimeSettings())
    doc = new_job(job_id="j", blueprint=bp, client="c", initial_data={"amount": 1}, now=0)
    machine.start(doc, 0, stdlib_random.Random(1))
    assert doc["approval"] is not None
    timeout_at = doc["approval"]["timeout_at"]
    assert timeout_at is not None
    late = timeout_at + 1
    machine.on_decision(doc, "approve", late, stdlib_random.Random(1), by="client:c")
    assert doc["state"] == "late"
    assert doc["steps"]["review"]["decision"] == "timeout"
