"""Catching failures by error code (`on: {"error:CARD_DECLINED": ...}`) in task, parallel and
subflow states, and raising a structured error again from an `end` state: pure rules on a
fake clock (RulesDriver), the blueprint language, and the graph."""

from __future__ import annotations

from typing import Any

import pytest

from engine.blueprint.dot import to_dot
from engine.blueprint.loader import load_blueprint_text
from engine.blueprint.model import Blueprint
from engine.errors import BlueprintError
from tests.engine.test_rules import bp
from tests.support.rules_driver import RulesDriver

PAY = """
blueprint: pay
start: charge
states:
  charge:
    task: charge_card
    retry:
      {max_attempts: 2, backoff: fixed, initial: 1s, jitter: 0, on: [CARD_DECLINED]}
    timeouts: {run: 10s, heartbeat: 10s}
    on: {success: done, "error:CARD_DECLINED": declined, TIMEOUTS, failure: broken}
  declined:
    end: failed
    error:
      code: "${ steps.charge.error.code }"
      message: "declined: ${ steps.charge.error.message }"
      details: "${ steps.charge.error.details }"
  slow: {end: failed, error: {code: GATEWAY_SLOW}}
  timed_out: {end: failed, error: {code: TIMED_OUT}}
  broken: {end: failed, error: {code: BROKEN, details: {from: "${ steps.charge.error.code }"}}}
  done: {end: finished}
"""


def pay(timeouts: str = '"error:TIMEOUT": slow, timeout: timed_out') -> Blueprint:
    return bp(PAY.replace("TIMEOUTS", timeouts))


def fail(job: RulesDriver, code: str, details: Any = None) -> None:
    error = {"code": code, "message": f"it said {code}", "details": details}
    job.result(job.lease("w"), "failure", error=error)


@pytest.mark.parametrize(
    ("code", "failures", "state", "error"),
    [
        # caught by its code once its retries are spent, and raised again with its details
        (
            "CARD_DECLINED",
            2,
            "declined",
            {
                "code": "CARD_DECLINED",
                "message": "declined: it said CARD_DECLINED",
                "details": {"limit": 5},
            },
        ),
        # a code nobody catches takes `failure`
        (
            "PERMANENT_ERROR",
            1,
            "broken",
            {"code": "BROKEN", "details": {"from": "PERMANENT_ERROR"}},
        ),
        ("INSUFFICIENT_FUNDS", 1, "broken", {"code": "BROKEN"}),
    ],
)
def test_a_task_failure_takes_the_transition_of_its_error_code(
    code: str, failures: int, state: str, error: dict[str, Any]
) -> None:
    job = RulesDriver(pay(), {})
    for attempt in range(failures):
        if attempt:
            job.fire_due(job.now + 1000)
        fail(job, code, {"limit": 5} if code == "CARD_DECLINED" else None)
    assert (job.status, job.doc["state"]) == ("failed", state)
    assert {k: job.doc["error"][k] for k in error} == error
    assert job.doc["error"]["state"] == state
    left = job.events("state_left")[-1]
    assert (left["state"], left["to"]) == ("charge", state)
    assert left["via"] == (f"error:{code}" if code == "CARD_DECLINED" else "failure")


@pytest.mark.parametrize(
    ("timeouts", "state"),
    [
        ('"error:TIMEOUT": slow, timeout: timed_out', "slow"),  # the code is more specific
        ('"error:DISPATCH_TIMEOUT": slow, timeout: timed_out', "timed_out"),
        ('"error:DISPATCH_TIMEOUT": slow, "error:X": timed_out', "broken"),  # then failure
    ],
)
def test_a_timeout_is_caught_by_its_code_before_timeout_and_failure(
    timeouts: str, state: str
) -> None:
    job = RulesDriver(pay(timeouts), {})
    job.lease("w")
    job.fire_due(job.now + 60_000)  # the run timeout; TIMEOUT is not in retry.on here
    assert (job.status, job.doc["state"]) == ("failed", state)


def test_without_a_catch_or_failure_the_job_fails_with_the_tasks_error() -> None:
    text = """
blueprint: bare
start: work
states:
  work: {task: t, retry: {max_attempts: 1}, on: {success: done, "error:OTHER": done}}
  done: {end: finished}
"""
    job = RulesDriver(bp(text), {})
    fail(job, "CARD_DECLINED")
    assert (job.status, job.doc["error"]["code"]) == ("failed", "CARD_DECLINED")


def test_a_worker_cannot_answer_with_a_catch_as_its_status() -> None:
    job = RulesDriver(pay(), {})
    job.result(job.lease("w"), "error:CARD_DECLINED", data={})
    assert job.doc["state"] == "broken"  # UNDECLARED_STATUS, a failure like any other
    assert job.doc["steps"]["charge"]["error"]["code"] == "UNDECLARED_STATUS"


FAN = """
blueprint: fan
start: fan
states:
  fan:
    parallel:
      for_each: initial_data.items
      task: check
      retry: {max_attempts: 1}
    on: {success: done, "error:FRAUD": fraud, failure: broken}
  fraud: {end: failed, error: {code: FRAUD, details: "${ steps.fan.error }"}}
  broken: {end: failed}
  done: {end: finished}
"""


@pytest.mark.parametrize(("code", "state"), [("FRAUD", "fraud"), ("PERMANENT_ERROR", "broken")])
def test_a_failed_branch_is_caught_by_its_code(code: str, state: str) -> None:
    job = RulesDriver(bp(FAN), {"items": [1, 2, 3]})
    first = job.lease("w")
    job.result(first, "failure", error={"code": code})
    assert (job.status, job.doc["state"]) == ("failed", state)
    assert job.queued() == []  # fail_fast cancelled the other branches
    if state == "fraud":
        assert job.doc["error"]["details"]["branch"] == 0


PARENT = """
blueprint: parent
start: call
states:
  call:
    subflow: {blueprint: child}
    on: {success: done, "error:CARD_DECLINED": declined, failure: broken}
  declined:
    end: failed
    error:
      code: "${ steps.call.error.code }"
      message: "${ steps.call.error.message }"
      details: {child: "${ steps.call.error.child_job_id }", why: "${ steps.call.error.details }"}
  broken: {end: failed}
  done: {end: finished}
"""

CHILD = """
blueprint: child
start: charge
states:
  charge:
    task: charge_card
    retry: {max_attempts: 1}
    on: {success: done, "error:CARD_DECLINED": declined}
  declined:
    end: failed
    error:
      code: "${ steps.charge.error.code }"
      message: card declined
      details: "${ steps.charge.error.details }"
  done: {end: finished}
"""


@pytest.mark.parametrize(("code", "state"), [("CARD_DECLINED", "declined"), ("OTHER", "broken")])
def test_an_error_raised_by_a_child_is_caught_by_its_parent(code: str, state: str) -> None:
    blueprints = {"parent": bp(PARENT), "child": bp(CHILD)}
    parent = RulesDriver(blueprints["parent"], {}, blueprints=blueprints)
    child = parent.child()
    fail(child, code, {"bank": "says no"})
    assert child.status == "failed"
    assert (parent.status, parent.doc["state"]) == ("failed", state)
    if state == "declined":
        assert parent.doc["error"] == {
            "code": "CARD_DECLINED",
            "message": "card declined",
            "state": "declined",
            "details": {"child": child.doc["id"], "why": {"bank": "says no"}},
        }


def test_an_end_error_whose_templates_give_no_text_still_says_something() -> None:
    text = """
blueprint: odd
start: stop
states:
  stop: {end: failed, error: {code: "${ initial_data.code }", message: "${ initial_data.m }"}}
"""
    assert RulesDriver(bp(text), {"code": None, "m": 42}).doc["error"] == {
        "code": "FAILED",
        "message": "42",
        "state": "stop",
    }


def test_a_catch_is_drawn_with_its_code() -> None:
    dot = to_dot(pay())
    assert '"charge" -> "declined" [label="error CARD_DECLINED"' in dot


@pytest.mark.parametrize(
    ("on", "message"),
    [
        ('"error:card_declined": done', '"error:card_declined" is not a valid task outcome'),
        ('"Error:X": done', '"Error:X" is not a valid task outcome'),
    ],
)
def test_bad_catches_are_reported_where_they_are(on: str, message: str) -> None:
    text = (
        "blueprint: bad\nstart: work\nstates:\n"
        f"  work: {{task: t, on: {{success: done, {on}}}}}\n  done: {{end: finished}}\n"
    )
    with pytest.raises(BlueprintError) as caught:
        load_blueprint_text(text)
    assert message in str(caught.value)
    assert ":4:" in str(caught.value)  # the line of the state
