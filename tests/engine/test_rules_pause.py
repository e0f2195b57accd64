"""Pause and resume as pure rules: what a paused job lets run and what it holds back."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.runtime.jobdoc import Ignored, visible_status
from tests.engine.test_flow_control import APPROVAL as FLOW_APPROVAL
from tests.engine.test_flow_control import FANOUT
from tests.engine.test_rules import INTERLEAVED, _act, _check, _drain, bp
from tests.engine.test_rules_listen import LISTEN
from tests.engine.test_rules_redrive import NO_FAILURE_EDGE
from tests.support.rules_driver import RulesDriver

SECOND = 1000

LINEAR = """
blueprint: linear
start: first
states:
  first:
    task: echo
    retry: {max_attempts: 3, backoff: fixed, initial: 10s, jitter: 0}
    on: {success: second}
  second:
    task: echo
    on: {success: done}
  done: {end: finished, output: "${ steps.first }"}
"""

FAN = FANOUT.replace("{limit}", "2").replace("{mode}", "fail_fast")

WAIT = """
blueprint: waits
start: nap
states:
  nap: {wait: 10s, next: work}
  work:
    task: echo
    on: {success: done}
  done: {end: finished}
"""

APPROVAL = FLOW_APPROVAL.replace("{timeout}", "1m")

FAILING = NO_FAILURE_EDGE


def test_a_running_task_finishes_its_result_is_kept_and_the_move_waits_for_resume() -> None:
    job = RulesDriver(bp(LINEAR))
    task = job.lease("w1")
    job.pause()
    assert visible_status(job.doc) == "paused"
    job.result(task, data={"a": 1})
    assert job.doc["steps"]["first"] == {"a": 1}  # kept
    assert (job.doc["state"], job.queued()) == ("first", [])  # not moved, nothing dispatched
    assert job.doc["paused"]["held"] == {"from": "first", "via": "success", "to": "second"}
    job.resume()
    assert (job.doc["state"], visible_status(job.doc)) == ("second", "queued")
    job.result(job.lease("w1"), data={})
    assert (job.status, job.doc["result"]) == ("finished", {"a": 1})
    names = job.event_names()
    assert names.index("job_paused") < names.index("move_held") < names.index("job_resumed")


def test_a_queued_task_is_held_back_and_dispatched_on_resume() -> None:
    job = RulesDriver(bp(LINEAR))
    [queued] = job.queued()
    job.pause()
    assert job.queued() == []
    assert job.next_due() is None  # the held task waits for the resume, not for a timer
    assert job.fire_due(job.now + 86_400 * SECOND) == 0
    job.resume()
    [again] = job.queued()
    assert again["metadata"]["attempt"] == queued["metadata"]["attempt"] == 1
    assert again["task_id"] != queued["task_id"]
    job.result(job.lease("w1"), data={})
    job.result(job.lease("w1"), data={})
    assert job.status == "finished"


def test_a_retry_that_falls_due_while_paused_waits_for_resume() -> None:
    job = RulesDriver(bp(LINEAR))
    task = job.lease("w1")
    job.pause()
    job.result(task, "failure", error={"code": "TRANSIENT_ERROR"})
    [retry] = job.doc["retries"]
    assert job.next_due() is None
    job.fire_due(retry["at"] + 60 * SECOND)
    assert job.queued() == []
    job.resume()
    assert job.queued()[0]["metadata"]["attempt"] == 2


def test_a_parallel_state_records_branches_but_launches_none_while_paused() -> None:
    job = RulesDriver(bp(FAN), {"items": [1, 2, 3, 4]})
    first, second = job.lease("w1"), job.lease("w2")
    job.pause()
    job.result(first, data=10)
    job.result(second, data=20)
    assert [job.branch_results[n] for n in (0, 1)] == [10, 20]  # stored as each settled
    assert job.queued() == []  # branches 3 and 4 wait
    job.resume()
    third, fourth = job.lease("w1"), job.lease("w2")
    job.result(fourth, data=40)
    job.result(third, data=30)
    assert (job.status, job.doc["result"]) == ("finished", [10, 20, 30, 40])


def test_a_timer_fires_while_paused_and_the_job_moves_on_resume() -> None:
    job = RulesDriver(bp(WAIT))
    job.pause()
    job.fire_due(job.now + 10 * SECOND)
    assert job.doc["wait_until"] is None
    assert (job.doc["state"], job.doc["paused"]["held"]["to"]) == ("nap", "work")
    assert job.next_due() is None
    job.resume()
    assert job.doc["state"] == "work"
    assert len(job.queued()) == 1


@pytest.mark.parametrize(
    ("decide", "status", "code"), [("approve", "finished", None), ("timeout", "failed", "LATE")]
)
def test_a_decision_or_timeout_while_paused_is_applied_on_resume(
    decide: str, status: str, code: str | None
) -> None:
    job = RulesDriver(bp(APPROVAL))
    job.pause()
    if decide == "timeout":
        job.fire_due(job.now + 60 * SECOND)
    else:
        job.decide(decide)
    assert job.doc["approval"] is None
    assert job.doc["state"] == "review"
    job.resume()
    assert job.status == status
    assert (job.doc["error"] or {}).get("code") == code


def test_an_event_while_paused_is_taken_and_the_job_moves_on_resume() -> None:
    job = RulesDriver(bp(LISTEN))
    job.result(job.lease("w1"), data={})
    job.pause()
    job.send("payment_received", {"amount": 5})
    assert job.doc["steps"]["paid"] == {"amount": 5}
    assert job.doc["state"] == "paid"
    job.resume()
    assert job.doc["state"] == "ship"


def test_a_failure_for_good_while_paused_ends_the_job_on_resume() -> None:
    job = RulesDriver(bp(FAILING))
    task = job.lease("w1")
    job.pause()
    job.result(task, "failure", error={"code": "PERMANENT_ERROR", "message": "no"})
    assert not job.ended
    job.resume()
    assert (job.status, job.doc["error"]["code"]) == ("failed", "PERMANENT_ERROR")


def test_the_job_timeout_waits_for_resume() -> None:
    job = RulesDriver(bp(WAIT), result_timeout_ms=5 * SECOND)
    job.pause()
    job.fire_due(job.now + 60 * SECOND)
    assert not job.ended
    job.resume()
    assert (job.next_due() or 0) <= job.now  # overdue: the next timer ends it
    job.fire_due(job.now)
    assert (job.status, job.doc["error"]["code"]) == ("failed", "JOB_TIMEOUT")


def test_cancel_ends_a_paused_job_and_its_running_tasks() -> None:
    job = RulesDriver(bp(LINEAR))
    task = job.lease("w1")
    job.pause()
    job.cancel()
    assert (job.status, job.doc.get("paused")) == ("cancelled", None)
    assert job.cancel_requests == [("w1", task["task_id"])]
    assert job.resume() == Ignored("job_cancelled")


def test_pause_and_resume_answer_ignored_when_they_do_not_apply() -> None:
    job = RulesDriver(bp(LINEAR))
    assert job.resume() == Ignored("not_paused")
    job.pause()
    assert job.pause() == Ignored("already_paused")


PAUSE_ACTIONS = st.lists(
    st.tuples(
        st.sampled_from(["lease", "ok", "fail", "tick", "beat", "lose", "late", "pause", "resume"]),
        st.integers(0, 20_000),
    ),
    max_size=60,
)


@settings(max_examples=150, deadline=None)
@given(items=st.lists(st.integers(0, 99), max_size=5), actions=PAUSE_ACTIONS)
def test_any_interleaving_with_pauses_keeps_the_job_sound_and_dispatches_nothing_paused(
    items: list[int], actions: list[tuple[str, int]]
) -> None:
    """Whatever the order of pauses, resumes, results, lost workers and time, the
    bookkeeping holds, nothing is dispatched while the job is paused, and once resumed and
    answered the job finishes with every branch's result in order."""
    job = RulesDriver(bp(INTERLEAVED), {"items": items})
    for action, n in actions:
        paused, seen = job.doc.get("paused") is not None, len(job.history)
        if action == "pause":
            job.pause()
        elif action == "resume":
            job.resume()
        else:
            _act(job, action, n)
        if paused and job.doc.get("paused") is not None:
            assert "task_queued" not in [e["event"] for e in job.history[seen:]]
            assert not job.queued()
        _check(job, items)
    if job.doc.get("paused") is not None:
        job.resume()
    _drain(job, items)
    assert job.status == "finished"
