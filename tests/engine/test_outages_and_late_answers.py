"""Leases across outages, decisions after a timeout, and why a late result is ignored.

Given an orchestrator restarted after workers could not reach it, when it looks at their
leases, then it gives them one heartbeat period before judging them; given an approval whose
timeout has passed, a decision is answered as after the timeout; given a task taken back,
its late result is `superseded`, not `duplicate`.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from engine.blueprint.loader import load_blueprint_text
from engine.clock import now_ms
from engine.runtime import background
from engine.runtime import orchestrator as orchestrator_module
from engine.runtime.host import OrchestratorSettings
from engine.runtime.jobdoc import Ignored, RuntimeSettings, TaskLease, TaskRecord, new_job
from engine.runtime.machine import Machine
from engine.runtime.tasks import lease_problem
from server.views import job_view
from tests.engine.test_flow_control import APPROVAL
from tests.engine.test_hot_path import submit
from tests.engine.test_orchestrator import LINEAR, orchestrator

HEARTBEAT_MS = 60_000
TASK: TaskRecord = {
    "id": "j-1",
    "type": "echo",
    "state": "work",
    "branch": None,
    "attempt": 1,
    "queued_at": 0,
    "dispatch_deadline": None,
    "run_ms": 3_600_000,
    "heartbeat_ms": HEARTBEAT_MS,
    "lease_ms": HEARTBEAT_MS,
    "checked_at": None,
}
LEASE = TaskLease("leased", HEARTBEAT_MS, "w", 1_000)


@pytest.mark.parametrize(
    ("now", "alive", "heard_since", "problem"),
    [
        # Heard all along: silence beyond the heartbeat timeout means trouble.
        (200_000, None, 0, "worker_lost"),
        (200_000, {"at": 100_000}, 0, "heartbeat"),
        (200_000, {"at": 190_000}, 0, None),
        # Nobody could hear the worker until 180 s (orchestrators or Redis down): its silence
        # counts from then, and a lost heartbeat record is not a lost worker yet.
        (200_000, None, 180_000, None),
        (200_000, {"at": 100_000}, 180_000, None),
        (241_000, None, 180_000, "worker_lost"),
        (241_000, {"at": 100_000}, 180_000, "heartbeat"),
        # The run timeout holds whatever the outage.
        (3_601_000, {"at": 3_600_500}, 3_600_000, "run"),
    ],
)
def test_silence_counts_only_while_the_deployment_could_hear_the_worker(
    now: int, alive: dict[str, Any] | None, heard_since: int, problem: str | None
) -> None:
    assert lease_problem(TASK, LEASE, now, alive, heard_since) == problem


async def test_a_restarted_orchestrator_keeps_the_leases_of_a_live_worker(
    redis_url: str, tmp_path: Path
) -> None:
    """The worker's heartbeat record expired while no orchestrator was up (here: deleted,
    as its TTL does). The restarted orchestrator must not re-run the task, and the result
    the worker held through the outage is accepted."""
    quiet = OrchestratorSettings(timer_interval_s=3600)  # this test fires the timer itself
    async with orchestrator(redis_url, tmp_path, LINEAR, orch_settings=quiet) as first:
        job_id = await submit(first, 5)
        (task,) = await first.next_tasks("w", ("echo",), 5, 1)
        await first.heartbeat("w", [task["task_id"]], HEARTBEAT_MS)
        alive_key = first.store.keys.worker_alive("w")
    async with aioredis.from_url(redis_url) as raw:  # the outage outlived the record's TTL
        assert await raw.delete(alive_key) == 1
    async with orchestrator(redis_url, tmp_path, LINEAR, orch_settings=quiet) as second:
        await background.fire(second, job_id)  # the restarted orchestrator looks at once
        reply = await second.submit_result(
            "w", {"job_id": job_id, "task_id": task["task_id"], "data": {"n": 5}}
        )
        assert reply == {"status": "accepted"}
        events = [e["event"] for e in await second.store.history(job_id)]
        assert "task_timeout" not in events
        doc = await second.wait_job(job_id, None, 5)
        assert doc is not None
        assert doc["status"] == "finished"


async def test_a_decision_just_after_the_approval_timeout_is_answered_as_after_it(
    redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    quiet = OrchestratorSettings(timer_interval_s=3600)  # the timeout's timer has not run
    async with orchestrator(
        redis_url, tmp_path, APPROVAL.replace("{timeout}", "1m"), orch_settings=quiet
    ) as orch:
        job_id = await orch.submit(orch.registry.by_name["approve"], {"amount": 1}, client="c")
        doc = await orch.get_job(job_id, "c")
        assert doc is not None
        assert doc["approval"] is not None
        token = doc["approval"]["token"]
        later = now_ms() + 61_000
        monkeypatch.setattr(orchestrator_module, "now_ms", lambda: later)  # a minute on
        assert await orch.decide(job_id, "c", "approve") == Ignored("not_waiting_for_approval")
        # Through the link: what a link whose approval has ended gets (404 in the API).
        assert await orch.decide(job_id, None, "approve", token=token) == Ignored("invalid_token")
        after = await orch.get_job(job_id, "c")
        assert after is not None
        assert after["state"] == "review"  # unchanged: the timer will take the timeout


def _leased_job() -> tuple[Machine, Any, dict[str, TaskLease], str]:
    bp = load_blueprint_text(LINEAR.replace("echo\n", "echo\n    retry: {max_attempts: 2}\n"))
    machine = Machine(bp, RuntimeSettings(heartbeat_timeout_ms=HEARTBEAT_MS))
    doc = new_job(job_id="j", blueprint=bp, client="c", initial_data={"n": 1}, now=0)
    machine.start(doc, 0, random.Random(1))
    (task_id,) = doc["tasks"]
    return machine, doc, {task_id: TaskLease("leased", HEARTBEAT_MS, "w", 10)}, task_id


def test_a_late_result_for_a_task_taken_back_is_superseded() -> None:
    machine, doc, leases, task_id = _leased_job()
    # The worker goes silent; the timer takes the task back and schedules attempt 2.
    machine.on_timer(doc, leases, 10 + 2 * HEARTBEAT_MS, random.Random(1), {"w": None}, None)
    assert task_id not in doc["tasks"]
    assert doc["retries"][0]["attempt"] == 2
    late = {"task_id": task_id, "worker_id": "w", "data": {"n": 1}}
    answer = machine.on_result(doc, leases, late, 10 + 2 * HEARTBEAT_MS, random.Random(1))
    assert answer == Ignored("superseded")


def test_a_repeated_result_is_a_duplicate() -> None:
    machine, doc, leases, task_id = _leased_job()
    result = {"task_id": task_id, "worker_id": "w", "data": {"n": 1}}
    assert not isinstance(machine.on_result(doc, leases, result, 20, random.Random(1)), Ignored)
    again = machine.on_result(doc, leases, result, 30, random.Random(1))
    assert again == Ignored("job_finished")  # this job ended with that result
    doc["status"] = "running"  # had the job gone on, the same result would be a duplicate
    assert machine.on_result(doc, leases, result, 30, random.Random(1)) == Ignored("duplicate")


def test_the_job_view_shows_the_worker_holding_a_task() -> None:
    _, doc, leases, _ = _leased_job()
    view = job_view(doc, {t: lease.encode() for t, lease in leases.items()})
    (task,) = view["tasks"]
    assert task["worker"] == "w"
    assert task["leased_at"] == "1970-01-01T00:00:00.010Z"
    assert view["status"] == "running"


async def test_history_shows_who_picked_up_a_running_task(store_url: str, tmp_path: Path) -> None:
    async with orchestrator(store_url, tmp_path, LINEAR) as orch:
        job_id = await submit(orch, 3)
        (task,) = await orch.next_tasks("w7", ("echo",), 5, 1)
        events = await orch.history(job_id, "c")
        assert events is not None
        picked = [e for e in events if e["event"] == "task_picked_up"]
        assert [(e["task_id"], e["worker"], e["attempt"]) for e in picked] == [
            (task["task_id"], "w7", 1)
        ]
        await orch.submit_result("w7", {"job_id": job_id, "task_id": task["task_id"]})
        ended = await orch.history(job_id, "c")
        assert ended is not None
        assert [e["event"] for e in ended].count("task_picked_up") == 1  # written once now


def test_a_lost_attempt_keeps_its_pick_up_in_history() -> None:
    machine, doc, leases, task_id = _leased_job()
    fx = machine.on_timer(doc, leases, 10 + 2 * HEARTBEAT_MS, random.Random(1), {"w": None}, None)
    assert fx is not None
    names = [(e["event"], e.get("task_id")) for e in fx.history]
    assert names[:2] == [("task_picked_up", task_id), ("task_timeout", task_id)]
    assert fx.history[0]["worker"] == "w"
    assert fx.history[0]["at"] == 10
