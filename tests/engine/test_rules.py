"""The transition rules as pure rules: a fake clock, scripted workers, no Redis, no sleeps.

Each test runs a blueprint through `Machine` with `RulesDriver` (tests/support/rules_driver.py)
and plays the workers, the people and the clock by hand.
"""

from __future__ import annotations

import functools
import itertools
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.blueprint.loader import load_blueprint, load_blueprint_text
from engine.blueprint.model import Blueprint
from engine.runtime.jobdoc import Ignored, RuntimeSettings
from engine.runtime.tasks import RECEIPT_MARGIN_MS
from tests.engine.test_flow_control import PARENT
from tests.support.rules_driver import RulesDriver

BLUEPRINTS = Path(__file__).resolve().parents[2] / "blueprints"
SECOND = 1000


@functools.cache  # compiling is the slow part; a Blueprint is immutable
def bp(text: str) -> Blueprint:
    return load_blueprint_text(text)


@functools.cache
def example(name: str) -> Blueprint:
    return load_blueprint(BLUEPRINTS / name)


# -- linear flow, choice, set ---------------------------------------------------------------------

LINEAR = """
blueprint: linear
start: first
states:
  first:
    task: echo
    params: {n: "${ initial_data.n }"}
    on: {success: second}
  second:
    task: echo
    params: {n: "${ steps.first.n }", m: 2}
    on: {success: done}
  done: {end: finished, output: {n: "${ steps.second.n }", all: "${ state_history }"}}
"""


def test_a_linear_flow_runs_each_task_in_turn_and_ends_with_its_output() -> None:
    job = RulesDriver(bp(LINEAR), {"n": 7})
    assert job.status == "queued"
    first = job.lease("w1")
    assert (first["type"], first["params"], first["metadata"]["attempt"]) == ("echo", {"n": 7}, 1)
    assert job.queued() == []
    job.result(first, data={"n": 7, "a": 1})
    second = job.lease("w2")
    assert second["params"] == {"n": 7, "m": 2}
    job.result(second, data={"n": 8, "b": 2})
    assert job.status == "finished"
    assert job.doc["result"] == {"n": 8, "all": {"n": 8, "a": 1, "b": 2}}
    assert job.event_names() == [
        "job_created",
        "state_entered",
        "task_queued",
        "task_picked_up",
        "task_result",
        "state_left",
        "state_entered",
        "task_queued",
        "task_picked_up",
        "task_result",
        "state_left",
        "state_entered",
        "job_finished",
    ]
    assert job.doc["hseq"] == len(job.history)
    assert job.next_due() is None
    assert job.leases == {}


def test_a_task_without_a_dispatch_timeout_waits_for_a_worker_however_long() -> None:
    job = RulesDriver(bp(LINEAR), {"n": 1})
    assert job.next_due() is None  # no timer at all
    assert job.fire_due(job.now + 365 * 86_400 * SECOND) == 0
    assert job.status == "queued"
    job.result(job.lease("late-worker"), data={"n": 1})
    job.result(job.lease("late-worker"), data={"n": 1})
    assert job.status == "finished"


@pytest.mark.parametrize(
    ("result", "worker", "reason"),
    [
        ({"status": "success"}, "w-other", "worker_mismatch"),
        ({"status": "success"}, None, "duplicate"),  # sent a second time
    ],
)
def test_results_from_the_wrong_worker_or_twice_are_ignored(
    result: dict[str, Any], worker: str | None, reason: str
) -> None:
    job = RulesDriver(bp(LINEAR), {"n": 1})
    task = job.lease("w1")
    if reason == "duplicate":
        job.result(task, data={})
        outcome = job.result(task, data={}, worker="w1")
    else:
        outcome = job.result(task, worker=worker, **result)
    assert outcome == Ignored(reason)


def test_progress_is_kept_on_the_job_only_from_the_worker_holding_the_task() -> None:
    job = RulesDriver(bp(LINEAR), {"n": 1})
    task = job.lease("w1")
    job.progress(task, {"progress": 0.5, "message": "half"})
    assert job.doc["progress"]["progress"] == 0.5
    assert job.progress(task, {"progress": 0.9}, worker="w2") == Ignored("worker_mismatch")
    assert job.doc["progress"]["progress"] == 0.5
    assert job.events("task_progress")[0]["message"] == "half"


def test_a_task_the_worker_never_received_is_queued_again_as_the_same_attempt() -> None:
    job = RulesDriver(bp(LINEAR), {"n": 1})
    first = job.lease("w1")
    job.release(first)
    [again] = job.queued()
    assert again["task_id"] != first["task_id"]
    assert again["metadata"]["attempt"] == 1
    assert job.result(first, data={}, worker="w1") == Ignored("superseded")
    job.result(job.lease("w2"), data={"n": 1})
    assert job.doc["state"] == "second"


@pytest.mark.parametrize(
    ("data", "status", "route", "outcome", "params"),
    [
        ({"items": [1], "priority": "express"}, "success", "express", "finished", None),
        ({"items": list(range(11))}, "success", "standard", "finished", 0.1),
        ({"items": [1, 2]}, "success", "standard", "finished", 0),
        ({"items": [1]}, "out_of_stock", None, "failed", None),
        ({"items": [1]}, "failure", None, "failed", None),
    ],
)
def test_choice_routes_on_the_first_condition_that_holds(
    data: dict[str, Any], status: str, route: str | None, outcome: str, params: float | None
) -> None:
    job = RulesDriver(example("choice_routing.yaml"), data)
    job.result(
        job.lease("w", "check_inventory"),
        status,
        data={"checked": True},
        error={"code": "PERMANENT_ERROR"} if status == "failure" else None,
    )
    if route is not None:
        ship = job.lease("w", "ship")
        assert job.doc["state"] == route
        if params is not None:
            assert ship["params"]["discount"] == params
        job.result(ship, data={"shipped": True})
    assert job.status == outcome
    if status == "out_of_stock":
        assert job.doc["error"]["code"] == "OUT_OF_STOCK"


def test_a_choice_without_a_match_or_otherwise_fails_the_job() -> None:
    job = RulesDriver(
        bp(
            "blueprint: c\nstart: pick\nstates:\n"
            "  pick: {choice: [{when: 'initial_data.go', goto: done}]}\n"
            "  done: {end: finished}\n"
        ),
        {"go": False},
    )
    assert (job.status, job.doc["error"]["code"]) == ("failed", "NO_CHOICE_MATCHED")


def test_set_computes_values_without_a_worker() -> None:
    job = RulesDriver(example("wait_and_set.yaml"), {"user": "ada"})
    text = "Hello ada, this is your reminder."
    assert job.doc["steps"]["compose"] == {"text": text, "channel": "email"}
    assert job.doc["state_history"]["channel"] == "email"
    assert job.queued() == []  # the set ran, the wait holds the job


# -- wait -----------------------------------------------------------------------------------------


def test_a_wait_for_a_duration_moves_on_exactly_when_it_ends() -> None:
    job = RulesDriver(example("wait_and_set.yaml"), {"user": "ada"})
    started = job.now
    assert (job.status, job.next_due()) == ("waiting", started + 2 * SECOND)
    assert job.fire_due(started + 2 * SECOND - 1) == 0
    assert job.status == "waiting"
    job.fire_due(started + 2 * SECOND)
    assert job.status == "queued"
    send = job.lease("mailer")
    assert send["params"]["body"] == "Hello ada, this is your reminder."
    job.result(send, data={})
    assert job.doc["result"] == {"sent": "Hello ada, this is your reminder."}


WAIT_UNTIL = """
blueprint: until
start: pause
states:
  pause:
    wait: {until: "${ initial_data.at }"}
    next: done
  done: {end: finished}
"""
NOW = 1_767_225_600_000  # 2026-01-01T00:00:00Z


@pytest.mark.parametrize(
    ("at", "due", "error"),
    [
        ("2026-01-01T00:01:00Z", NOW + 60 * SECOND, None),
        # The same moment as now (in another zone), or a moment past: due at once, so the
        # job goes on within the change that entered the wait.
        ("2026-01-01T01:00:00+01:00", None, None),
        ("2025-12-31T00:00:00Z", None, None),
        ("2026-01-01T00:01:00", None, "has no timezone"),
        ("tomorrow", None, "not an ISO 8601 date-time"),
        (42, None, "not an ISO 8601 date-time"),
    ],
)
def test_a_wait_until_a_moment(at: Any, due: int | None, error: str | None) -> None:
    job = RulesDriver(bp(WAIT_UNTIL), {"at": at}, now=NOW)
    if error is not None:
        assert (job.status, job.doc["error"]["code"]) == ("failed", "EXPRESSION_ERROR")
        assert error in job.doc["error"]["message"]
        return
    if due is None:
        assert (job.status, job.doc["wait_until"]) == ("finished", None)
        return
    assert (job.status, job.next_due()) == ("waiting", due)
    job.fire_due(due)
    assert job.status == "finished"


# -- retries --------------------------------------------------------------------------------------

RETRYING = """
blueprint: retrying
start: work
states:
  work:
    task: flaky
    retry: {max_attempts: 4, backoff: BACKOFF, initial: 2s, max: 5s, jitter: 0.25}
    on: {success: done, failure: broken}
  done: {end: finished}
  broken: {end: failed, error: {code: BROKEN}}
"""


@pytest.mark.parametrize(
    ("backoff", "bases_s"),
    [("fixed", [2, 2, 2]), ("linear", [2, 4, 5]), ("exponential", [2, 4, 5])],
)
@pytest.mark.parametrize("seed", range(5))
def test_retries_back_off_within_the_policy_then_follow_failure(
    backoff: str, bases_s: list[int], seed: int
) -> None:
    job = RulesDriver(bp(RETRYING.replace("BACKOFF", backoff)), seed=seed)
    for attempt, base_s in enumerate(bases_s, start=1):
        task = job.lease("w")
        assert task["metadata"]["attempt"] == attempt
        job.result(task, "failure", error={"code": "TRANSIENT_ERROR", "message": "flaky"})
        assert job.status == "retrying"
        [scheduled] = job.events("task_retry_scheduled")[-1:]
        delay = scheduled["delay_ms"]
        assert base_s * 750 <= delay <= base_s * 1250, (attempt, delay)
        assert job.next_due() == job.now + delay
        job.fire_due(job.now + delay - 1)
        assert job.queued() == []
        job.fire_due(job.now + 1)
        assert len(job.queued()) == 1
    job.result(job.lease("w"), "failure", error={"code": "TRANSIENT_ERROR"})
    assert (job.status, job.doc["state"], job.doc["error"]["code"]) == (
        "failed",
        "broken",
        "BROKEN",
    )
    assert job.doc["steps"]["work"]["error"]["attempt"] == 4


@pytest.mark.parametrize("code", ["PERMANENT_ERROR", "INVALID_INPUT_ERROR", "SOMETHING_ELSE"])
def test_errors_the_policy_does_not_retry_fail_at_once(code: str) -> None:
    job = RulesDriver(bp(RETRYING.replace("BACKOFF", "fixed")))
    job.result(job.lease("w"), "failure", error={"code": code, "message": "no"})
    assert (job.status, job.doc["state"]) == ("failed", "broken")
    assert job.doc["steps"]["work"]["error"]["code"] == code
    assert job.events("task_retry_scheduled") == []


def test_a_result_outside_the_output_schema_fails_the_attempt() -> None:
    job = RulesDriver(
        bp(
            "blueprint: o\nstart: w\nstates:\n"
            "  w: {task: t, retry: {max_attempts: 1}, output_schema: {type: object, "
            "required: [x]}, on: {success: done, failure: bad}}\n"
            "  done: {end: finished}\n  bad: {end: failed}\n"
        )
    )
    job.result(job.lease("w"), data={"y": 1})
    assert job.doc["steps"]["w"]["error"]["code"] == "INVALID_OUTPUT"
    assert job.doc["state"] == "bad"


def test_an_undeclared_status_fails_the_state() -> None:
    job = RulesDriver(bp(LINEAR), {"n": 1})
    job.result(job.lease("w"), "out_of_stock", data={})
    assert job.doc["error"]["code"] == "UNDECLARED_STATUS"


# -- timeouts and lost workers --------------------------------------------------------------------

TIMEOUTS = """
blueprint: timeouts
start: work
states:
  work:
    task: slow
    retry: {max_attempts: 1}
    timeouts: {dispatch: 10s, run: 60s, heartbeat: 5s}
    on: {success: done, timeout: too_slow, failure: broken}
  done: {end: finished}
  too_slow: {end: failed, error: {code: TOO_SLOW}}
  broken: {end: failed, error: {code: BROKEN}}
"""


def _never_taken(job: RulesDriver) -> int:
    return job.now + 10 * SECOND


def _runs_too_long(job: RulesDriver) -> int:
    job.lease("w")
    leased_at = job.now
    for _ in range(14):  # heartbeats keep coming, the result never does
        job.fire_due(job.now + 4 * SECOND)
        job.heartbeat("w")
    return leased_at + 60 * SECOND


def _stops_heartbeating(job: RulesDriver) -> int:
    job.lease("w")
    # The lease is checked every 5 s: the first check finds the beat just 5 s old (allowed),
    # the second finds it overdue.
    return job.now + 10 * SECOND


def _worker_lost(job: RulesDriver) -> int:
    job.lease("w")
    job.lose("w")
    return job.now + 5 * SECOND  # the next lease check


def _heartbeats_without_the_task(job: RulesDriver) -> int:
    task = job.lease("w")
    job.heartbeat("w", tasks=[task["task_id"]])  # the worker got the task...
    job.fire_due(job.now + 5 * SECOND)
    for _ in range(2):  # ...then lists it no more: two lease periods of grace, then it is lost
        job.heartbeat("w", tasks=[])
        job.fire_due(job.now + 5 * SECOND)
    job.heartbeat("w", tasks=[])
    return job.now + 5 * SECOND


@pytest.mark.parametrize(
    ("scenario", "timeout", "code", "told_worker"),
    [
        (_never_taken, "dispatch", "DISPATCH_TIMEOUT", False),
        (_runs_too_long, "run", "TIMEOUT", True),
        (_stops_heartbeating, "heartbeat", "TIMEOUT", True),
        (_worker_lost, "worker_lost", "TIMEOUT", True),
        (_heartbeats_without_the_task, "worker_lost", "TIMEOUT", True),
    ],
)
def test_timeouts_take_the_task_back_and_follow_on_timeout(
    scenario: Any, timeout: str, code: str, told_worker: bool
) -> None:
    job = RulesDriver(bp(TIMEOUTS))
    task_id = job.queued()[0]["task_id"]
    moment = scenario(job)
    assert job.status == "queued", "nothing timed out early"
    job.fire_due(moment - 1)
    assert job.status == "queued", "nothing timed out early"
    job.fire_due(moment)
    assert (job.status, job.doc["state"]) == ("failed", "too_slow")
    [event] = job.events("task_timeout")
    assert event["timeout"] == timeout
    assert job.doc["steps"]["work"]["error"]["code"] == code
    assert job.cancel_requests == ([("w", task_id)] if told_worker else [])
    assert (job.queued(), job.leases) == ([], {})
    # the late result of the taken-back task changes nothing
    assert job.result(task_id, data={}, worker="w") == Ignored("job_finished")


def test_a_lease_the_worker_never_listed_is_queued_again_as_the_same_attempt() -> None:
    """The poll's answer never reached the worker (its orchestrator was killed, a proxy
    dropped it): the first heartbeat recorded a receipt margin after the lease without the
    task takes it back, long before the heartbeat timeout, and the attempt is not counted."""
    job = RulesDriver(bp(TIMEOUTS.replace("heartbeat: 5s", "heartbeat: 60s")))
    first = job.lease("w")
    leased_at = job.now
    # A heartbeat recorded within the margin may have left the worker before the answer came.
    job.fire_due(leased_at + RECEIPT_MARGIN_MS - 1)
    job.heartbeat("w", tasks=[])
    job.fire_due(leased_at + 2 * RECEIPT_MARGIN_MS - 1)
    assert (job.queued(), list(job.leases)) == ([], [first["task_id"]])
    # One recorded after it did not: the task goes back at the next look.
    job.heartbeat("w", tasks=[])
    job.fire_due(leased_at + 2 * RECEIPT_MARGIN_MS)
    [again] = job.queued()
    assert again["task_id"] != first["task_id"]
    assert again["metadata"]["attempt"] == 1
    [released] = job.events("task_released")
    assert (released["worker"], released["reason"]) == ("w", "unreceived")
    assert job.cancel_requests == [("w", first["task_id"])]
    assert not job.events("task_timeout", "task_picked_up")
    assert job.result(first, data={}, worker="w") == Ignored("superseded")
    job.lease("w2")
    job.result(again, data={}, worker="w2")
    assert job.status == "finished"


def test_a_task_the_worker_lists_late_is_kept_and_looked_at_once_a_lease_period() -> None:
    job = RulesDriver(bp(TIMEOUTS.replace("heartbeat: 5s", "heartbeat: 60s")))
    task = job.lease("w")
    leased_at = job.now
    job.fire_due(leased_at + RECEIPT_MARGIN_MS - 1)
    job.heartbeat("w", tasks=[task["task_id"]])  # the answer arrived, a little late
    job.fire_due(leased_at + 5 * RECEIPT_MARGIN_MS)
    assert list(job.leases) == [task["task_id"]]
    assert job.doc["tasks"][task["task_id"]]["listed"] is True
    # Once it is listed, the timer looks at the lease once a lease period, as before.
    assert job.next_due() == leased_at + 60 * SECOND
    job.result(task, data={}, worker="w")
    assert job.status == "finished"
    assert not job.events("task_released", "task_timeout")


def test_heartbeats_that_do_not_say_which_tasks_the_worker_holds_take_none_back() -> None:
    job = RulesDriver(bp(TIMEOUTS.replace("heartbeat: 5s", "heartbeat: 60s")))
    task = job.lease("w")
    for _ in range(11):  # no `current_tasks` in them (55 s; the run timeout is 60 s)
        job.heartbeat("w")
        job.fire_due(job.now + RECEIPT_MARGIN_MS)
    assert list(job.leases) == [task["task_id"]]
    assert not job.events("task_released", "task_timeout")


@pytest.mark.parametrize(("punctual", "timed_out"), [(True, False), (False, True)])
def test_a_late_timer_sees_an_overdue_heartbeat_at_once(punctual: bool, timed_out: bool) -> None:
    job = RulesDriver(bp(TIMEOUTS))
    job.lease("w")
    job.fire_due(job.now + 7 * SECOND, punctual=punctual)
    assert (job.status == "failed") is timed_out
    assert len(job.events("task_timeout")) == int(timed_out)


def test_a_timed_out_attempt_is_retried_as_a_new_task() -> None:
    job = RulesDriver(bp(TIMEOUTS.replace("max_attempts: 1", "max_attempts: 2, initial: 1s")))
    first = job.lease("w")
    job.lose("w")
    job.fire_due(job.now + 5 * SECOND)
    assert job.status == "retrying"
    job.fire_due(job.now + 2 * SECOND)
    second = job.lease("w2")
    assert second["task_id"] != first["task_id"]
    assert second["metadata"]["attempt"] == 2
    assert job.result(first, data={}, worker="w") == Ignored("superseded")
    job.result(second, data={})
    assert job.status == "finished"


def test_the_job_result_timeout_fails_the_whole_job() -> None:
    job = RulesDriver(bp(TIMEOUTS), result_timeout_ms=30 * SECOND)
    job.lease("w")
    for _ in range(5):  # a healthy worker, but the job takes too long
        job.heartbeat("w")
        job.fire_due(job.now + 4 * SECOND)
    job.heartbeat("w")
    job.fire_due(job.now + 10 * SECOND)
    assert (job.status, job.doc["error"]["code"]) == ("failed", "JOB_TIMEOUT")
    assert len(job.cancel_requests) == 1


# -- parallel -------------------------------------------------------------------------------------

FANOUT = """
blueprint: fanout
start: fan
states:
  fan:
    parallel:
      for_each: initial_data.items
      task: square
      params: {x: "${ item }", i: "${ index }"}
      retry: {max_attempts: 1}
      max_concurrency: LIMIT
      on_branch_failure: MODE
    on: {success: done, failure: broken}
  done: {end: finished, output: "${ steps.fan }"}
  broken: {end: failed}
"""


def fanout(limit: int = 100, mode: str = "fail_fast") -> Blueprint:
    return bp(FANOUT.replace("LIMIT", str(limit)).replace("MODE", mode))


@pytest.mark.parametrize("order", list(itertools.permutations(range(4))))
def test_for_each_joins_results_in_branch_order_whatever_the_arrival_order(
    order: tuple[int, ...],
) -> None:
    job = RulesDriver(fanout(), {"items": [5, 6, 7, 8]})
    taken = [job.lease(f"w{i}") for i in range(4)]
    assert [t["params"] for t in taken] == [{"x": x, "i": i} for i, x in enumerate([5, 6, 7, 8])]
    for branch in order:
        assert job.status == "running"
        job.result(taken[branch], data={"sq": taken[branch]["params"]["x"] ** 2})
    assert job.status == "finished"
    assert job.doc["result"] == [{"sq": 25}, {"sq": 36}, {"sq": 49}, {"sq": 64}]
    assert job.event_names().count("parallel_joined") == 1
    assert [e["branch"] for e in job.events("branch_ended")] == list(order)


def test_static_branches_join_by_name() -> None:
    job = RulesDriver(example("parallel_branches.yaml"), {"document": "d.pdf"})
    ocr, meta = job.lease("w", "ocr"), job.lease("w", "extract_metadata")
    assert ocr["params"] == meta["params"] == {"document": "d.pdf"}
    job.result(meta, data={"pages": 2})
    job.result(ocr, data={"text": "hello"})
    assert job.doc["steps"]["analyse"] == {"text": {"text": "hello"}, "meta": {"pages": 2}}
    assert [e["branch"] for e in job.events("branch_ended")] == ["meta", "text"]
    index = job.lease("w", "index_document")
    assert index["params"] == {"text": "hello", "meta": {"pages": 2}}


def test_an_empty_for_each_joins_at_once() -> None:
    job = RulesDriver(fanout(), {"items": []})
    assert (job.status, job.doc["result"]) == ("finished", [])


@pytest.mark.parametrize(
    ("mode", "status", "state"),
    [("fail_fast", "failed", "broken"), ("collect", "finished", "done")],
)
def test_a_failed_branch_fails_fast_or_is_collected(mode: str, status: str, state: str) -> None:
    job = RulesDriver(fanout(mode=mode), {"items": [1, 2, 3]})
    first, second, third = (job.lease(w) for w in ("w0", "w1", "w2"))
    job.result(first, data={"sq": 1})
    job.result(second, "failure", error={"code": "PERMANENT_ERROR", "message": "bad"})
    if mode == "fail_fast":
        # the sibling still running is stopped, and its late result is ignored
        assert job.cancel_requests == [("w2", third["task_id"])]
        assert job.result(third, data={"sq": 9}) == Ignored("job_finished")
    else:
        assert job.cancel_requests == []
        job.result(third, data={"sq": 9})
    assert (job.status, job.doc["state"]) == (status, state)
    if mode == "collect":
        result = job.doc["result"]
        assert (result[0], result[2]) == ({"sq": 1}, {"sq": 9})
        assert result[1]["error"]["code"] == "PERMANENT_ERROR"
        assert result[1]["error"]["branch"] == 1
        assert job.events("parallel_joined")[0]["failed"] == 1
    else:
        assert job.doc["steps"]["fan"]["error"]["branch"] == 1


def test_fail_fast_forgets_the_retries_of_other_branches() -> None:
    job = RulesDriver(
        bp(
            FANOUT.replace("max_attempts: 1", "max_attempts: 3, initial: 1s")
            .replace("LIMIT", "10")
            .replace("MODE", "fail_fast")
        ),
        {"items": [1, 2]},
    )
    first, second = job.lease("w"), job.lease("w")
    job.result(first, "failure", error={"code": "TRANSIENT_ERROR"})
    assert job.doc["retries"]
    job.result(second, "failure", error={"code": "PERMANENT_ERROR"})
    assert (job.status, job.doc["retries"], job.next_due()) == ("failed", [], None)


@pytest.mark.parametrize("limit", [1, 2, 3])
def test_max_concurrency_bounds_the_running_branches(limit: int) -> None:
    job = RulesDriver(fanout(limit=limit), {"items": list(range(7))})
    seen = []
    while not job.ended:
        assert len(job.leases) <= limit  # queued and leased tasks alike
        seen.append(len(job.leases))
        task = job.lease("w")
        job.result(task, data=task["params"]["x"])
    assert max(seen) == limit
    assert job.doc["result"] == list(range(7))


# -- approvals ------------------------------------------------------------------------------------

APPROVAL = """
blueprint: approve
start: review
states:
  review:
    approval: {message: "ok ${ initial_data.amount }?", timeout: 1h}
    on: {approve: yes, reject: no, timeout: late}
  yes: {end: finished}
  no: {end: failed, error: {code: REJECTED}}
  late: {end: failed, error: {code: LATE}}
"""
HOUR = 3600 * SECOND


@pytest.mark.parametrize(
    ("decision", "after", "fire_first", "state", "code"),
    [
        ("approve", 0, False, "yes", None),
        ("reject", HOUR - 1, False, "no", "REJECTED"),
        # Too late: refused as once the timer has run (it has not yet), which then times out.
        ("approve", HOUR, False, "late", "LATE"),
        ("approve", HOUR, True, "late", "LATE"),  # the timer ran first: the decision is ignored
    ],
)
def test_approvals_take_a_decision_or_time_out(
    decision: str, after: int, fire_first: bool, state: str, code: str | None
) -> None:
    job = RulesDriver(bp(APPROVAL), {"amount": 5})
    assert job.status == "waiting_for_human"
    assert job.doc["approval"]["message"] == "ok 5?"
    assert job.next_due() == job.now + HOUR
    if fire_first:
        job.fire_due(job.now + after)
        assert job.decide(decision) == Ignored("not_waiting_for_approval")
    elif after >= HOUR:
        job.now += after
        assert job.decide(decision, by="client:c") == Ignored("not_waiting_for_approval")
        job.fire_due(job.now)
    else:
        job.now += after
        job.decide(decision, by="client:c")
    assert job.doc["state"] == state
    expected_by = "timeout" if state == "late" else "client:c"
    assert job.doc["steps"]["review"]["decision"] == ("timeout" if state == "late" else decision)
    assert job.doc["steps"]["review"]["by"] == expected_by
    assert (job.doc["error"] or {}).get("code") == code
    assert job.event_names().count("approval_decided") == 1


def test_an_unknown_decision_is_ignored_and_the_job_still_waits() -> None:
    job = RulesDriver(bp(APPROVAL), {"amount": 5})
    assert job.decide("maybe") == Ignored("unknown_decision")
    assert job.status == "waiting_for_human"


def test_approval_tokens_differ_between_jobs() -> None:
    tokens = {
        RulesDriver(bp(APPROVAL), {"amount": 1}, seed=s).doc["approval"]["token"] for s in (1, 2)
    }
    assert len(tokens) == 2


# -- subflows -------------------------------------------------------------------------------------

CHILD = """
blueprint: child
start: work
states:
  work:
    task: child_work
    params: {n: "${ initial_data.n }"}
    retry: {max_attempts: 1}
    on: {success: done, failure: broken}
  done: {end: finished, output: {doubled: "${ steps.work.doubled }"}}
  broken: {end: failed, error: {code: CHILD_BROKE}}
"""


def family() -> dict[str, Blueprint]:
    return {"parent": bp(PARENT), "child": bp(CHILD)}


@pytest.mark.parametrize(
    ("status", "outcome", "result", "error"),
    [
        ("success", "finished", {"child": {"doubled": 6}}, None),
        ("failure", "failed", {}, "CHILD_FAILED"),
    ],
)
def test_a_subflow_resumes_its_parent_with_the_childs_outcome(
    status: str, outcome: str, result: Any, error: str | None
) -> None:
    blueprints = family()
    parent = RulesDriver(blueprints["parent"], {"n": 3}, blueprints=blueprints)
    assert parent.status == "waiting"
    child = parent.child()
    assert child.doc["parent"] == {"job_id": "job", "state": "call", "depth": 1}
    task = child.lease("w")
    assert task["params"] == {"n": 3}
    child.result(task, status, data={"doubled": 6}, error={"code": "PERMANENT_ERROR"})
    assert child.status == outcome
    assert (parent.status, parent.doc["result"]) == (outcome, result)
    assert (parent.doc["error"] or {}).get("code") == error
    assert parent.event_names().count("subflow_ended") == 1


def test_a_parent_recreates_a_child_that_was_never_created() -> None:
    blueprints = family()
    parent = RulesDriver(blueprints["parent"], {"n": 1}, blueprints={})  # child not loaded
    assert parent.children == {}
    check = parent.settings.subflow_check_ms
    parent.blueprints = blueprints  # ... until it is
    parent.fire_due(parent.now + check - 1)
    assert parent.children == {}
    parent.fire_due(parent.now + 1)
    child = parent.child()
    child.result(child.lease("w"), data={"doubled": 2})
    assert parent.doc["result"] == {"child": {"doubled": 2}}


def test_subflows_nested_too_deep_fail_the_state() -> None:
    deep = RulesDriver(
        bp(PARENT),
        {"n": 1},
        settings=RuntimeSettings(max_subflow_depth=2),
        parent={"job_id": "up", "state": "s", "depth": 2},
    )
    assert (deep.status, deep.doc["steps"]["call"]["error"]["code"]) == ("failed", "SUBFLOW_DEPTH")


# -- cancel ---------------------------------------------------------------------------------------


def test_cancel_stops_running_tasks_and_later_results_are_ignored() -> None:
    job = RulesDriver(fanout(limit=2), {"items": [1, 2, 3]})
    held = job.lease("w")
    assert len(job.queued()) == 1
    job.cancel()
    assert job.status == "cancelled"
    assert job.cancel_requests == [("w", held["task_id"])]
    assert (job.queued(), job.leases, job.next_due()) == ([], {}, None)
    assert job.result(held, data={}) == Ignored("job_cancelled")
    assert job.cancel() == Ignored("job_cancelled")
    assert job.event_names().count("job_cancelled") == 1


def test_a_cancelled_wait_never_moves_on() -> None:
    job = RulesDriver(example("wait_and_set.yaml"), {"user": "ada"})
    job.cancel()
    assert job.fire_due(job.now + HOUR) == 0
    assert (job.status, job.queued()) == ("cancelled", [])


def test_cancelling_a_parent_cancels_its_child() -> None:
    blueprints = family()
    parent = RulesDriver(blueprints["parent"], {"n": 1}, blueprints=blueprints)
    child = parent.child()
    task = child.lease("w")
    parent.cancel()
    assert (parent.status, child.status) == ("cancelled", "cancelled")
    assert child.cancel_requests == [("w", task["task_id"])]
    assert parent.event_names().count("job_cancelled") == 1  # the child's end changes nothing


# -- limits and expression errors -----------------------------------------------------------------

LOOP = """
blueprint: loop
limits: {max_transitions: 7}
start: count
states:
  count: {set: {n: 1}, next: again}
  again:
    choice: [{when: "initial_data.forever", goto: count}]
    otherwise: done
  done: {end: finished}
"""


def test_a_loop_without_workers_stops_at_max_transitions() -> None:
    job = RulesDriver(bp(LOOP), {"forever": True})
    assert (job.status, job.doc["error"]["code"]) == ("failed", "MAX_TRANSITIONS")
    assert job.doc["transitions"] == 8
    assert RulesDriver(bp(LOOP), {"forever": False}).status == "finished"


@pytest.mark.parametrize(
    ("text", "data", "state"),
    [
        (FANOUT.replace("LIMIT", "2").replace("MODE", "collect"), {"items": "abc"}, "fan"),
        (LINEAR.replace("${ initial_data.n }", "${ abs(initial_data.n) }"), {"n": "x"}, "first"),
        (WAIT_UNTIL, {"at": None}, "pause"),
    ],
)
def test_expression_errors_fail_the_job_naming_the_state(
    text: str, data: dict[str, Any], state: str
) -> None:
    job = RulesDriver(bp(text), data)
    assert (job.status, job.doc["error"]["code"]) == ("failed", "EXPRESSION_ERROR")
    assert job.doc["error"]["state"] == state
    assert f"state {state!r}" in job.doc["error"]["message"]
    assert job.queued() == []


def test_an_expression_error_in_a_later_state_cancels_the_running_tasks() -> None:
    job = RulesDriver(bp(LINEAR.replace("${ steps.first.n }", "${ abs(steps.first.n) }")), {"n": 1})
    job.result(job.lease("w"), data={"n": "not a number"})
    assert (job.status, job.doc["error"]["state"]) == ("failed", "second")


# -- any interleaving --------------------------------------------------------------------------

INTERLEAVED = """
blueprint: interleaved
start: fan
states:
  fan:
    parallel:
      for_each: initial_data.items
      task: square
      params: {x: "${ item }"}
      retry: {max_attempts: 3, backoff: fixed, initial: 1s, jitter: 0.5}
      timeouts: {run: 30s, heartbeat: 5s}
      max_concurrency: 2
      on_branch_failure: collect
    on: {success: done}
  done: {end: finished, output: "${ steps.fan }"}
"""
ACTIONS = st.lists(
    st.tuples(
        st.sampled_from(["lease", "ok", "fail", "tick", "beat", "lose", "late", "cancel"]),
        st.integers(0, 20_000),
    ),
    max_size=60,
)


def _act(job: RulesDriver, action: str, n: int) -> None:
    leased = sorted(t for t, lease in job.leases.items() if lease.state == "leased")
    worker = f"w{n % 3}"
    if action == "lease" and job.queued():
        job.lease(worker, task_id=job.queued()[n % len(job.queued())]["task_id"])
    elif action in ("ok", "fail") and leased:
        task = job.payloads[leased[n % len(leased)]]
        if action == "ok":
            job.result(task, data={"x": task["params"]["x"]})
        else:
            job.result(task, "failure", error={"code": "TRANSIENT_ERROR"})
    elif action == "tick":
        job.fire_due(job.now + n)
    elif action == "beat":
        job.heartbeat(worker, [t for t in leased if job.leases[t].worker == worker])
    elif action == "lose":
        job.lose(worker)
    elif action == "late" and job.payloads:  # a result for any task ever sent, from anyone
        task = job.payloads[sorted(job.payloads)[n % len(job.payloads)]]
        job.result(task, data={"x": task["params"]["x"]}, worker=worker)
    elif action == "cancel" and n % 10 == 0:
        job.cancel()


def _check(job: RulesDriver, items: list[int]) -> None:
    assert set(job.leases) == set(job.doc["tasks"])  # every active task, and only those
    assert {e.task_id for e in job.queue} <= {
        t for t, lease in job.leases.items() if lease.state == "queued"
    }
    assert len(job.leases) <= 2  # max_concurrency
    assert job.doc["hseq"] == len(job.history)
    names = job.event_names()
    assert names.count("parallel_joined") <= 1
    assert sum(names.count(f"job_{s}") for s in ("finished", "failed", "cancelled")) <= 1
    if job.ended:
        assert (job.leases, job.next_due()) == ({}, None)
    if job.status == "finished":
        for item, got in zip(items, job.doc["result"], strict=True):
            assert got == {"x": item} or got["error"]["code"] in ("TRANSIENT_ERROR", "TIMEOUT")


@settings(max_examples=150, deadline=None)
@given(items=st.lists(st.integers(0, 99), max_size=5), actions=ACTIONS)
def test_any_interleaving_of_results_timeouts_and_lost_workers_keeps_the_job_sound(
    items: list[int], actions: list[tuple[str, int]]
) -> None:
    """Whatever the order of leases, results, late results, heartbeats, lost workers and
    time, the bookkeeping holds, the join runs once, and the job ends once the workers
    answer: finished with each branch's result (or error) in branch order, or cancelled."""
    job = RulesDriver(bp(INTERLEAVED), {"items": items})
    for action, n in actions:
        _act(job, action, n)
        _check(job, items)
    _drain(job, items)
    assert job.status in ("finished", "cancelled")


def _drain(job: RulesDriver, items: list[int]) -> None:
    """Healthy workers answer everything, and time passes, until the job ends."""
    for _ in range(100):
        if job.ended:
            break
        while job.queued():
            task = job.lease("healthy")
            job.result(task, data={"x": task["params"]["x"]})
            _check(job, items)
        job.fire_due(job.now + 60 * SECOND)
        _check(job, items)
