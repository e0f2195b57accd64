"""Listen states as pure rules: events sent to a job, their payload schema, the timeout."""

from __future__ import annotations

import pytest

from engine.runtime.jobdoc import Ignored
from tests.engine.test_rules import bp
from tests.support.rules_driver import RulesDriver

SECOND = 1000

LISTEN = """
blueprint: listening
start: prepare
states:
  prepare:
    task: prepare
    on: {success: paid}
  paid:
    listen:
      event: payment_received
      schema: {type: object, required: [amount], properties: {amount: {type: number}}}
      timeout: 1h
    on: {received: ship, timeout: remind}
  ship:
    task: ship
    params: {amount: "${ steps.paid.amount }"}
    on: {success: done}
  done: {end: finished, output: "${ steps.paid }"}
  remind: {end: failed, error: {code: UNPAID}}
"""

FOREVER = """
blueprint: forever
start: hear
states:
  hear:
    listen: {event: ping}
    on: {received: done}
  done: {end: finished, output: "${ steps.hear }"}
"""


def listening_job() -> RulesDriver:
    job = RulesDriver(bp(LISTEN))
    job.result(job.lease("w1"), data={})
    assert (job.status, job.doc["state"]) == ("waiting", "paid")
    return job


def test_the_event_payload_lands_in_steps_and_the_job_goes_on() -> None:
    job = listening_job()
    assert job.doc["listen"]["event"] == "payment_received"
    assert job.next_due() == job.now + 3600 * SECOND
    job.send("payment_received", {"amount": 12.5, "ref": "r1"})
    assert job.doc["listen"] is None
    assert job.doc["steps"]["paid"] == {"amount": 12.5, "ref": "r1"}
    assert job.lease("w1", "ship")["params"] == {"amount": 12.5}
    names = job.event_names()
    at = names.index("event_awaited")
    assert names[at : at + 3] == ["event_awaited", "event_received", "state_left"]
    [received] = job.events("event_received")
    assert received == {
        "at": job.now,
        "event": "event_received",
        "state": "paid",
        "name": "payment_received",
    }


@pytest.mark.parametrize(
    ("name", "payload", "reason"),
    [
        ("payment_failed", {"amount": 1}, "not_listening"),  # another name
        ("payment_received", {"amount": "ten"}, "invalid_payload"),
        ("payment_received", {}, "invalid_payload"),
        ("payment_received", None, "invalid_payload"),
    ],
)
def test_an_event_the_state_does_not_take_changes_nothing(
    name: str, payload: object, reason: str
) -> None:
    job = listening_job()
    before = (dict(job.doc), job.commits)
    assert job.send(name, payload) == Ignored(reason)
    assert (dict(job.doc), job.commits) == before
    job.send("payment_received", {"amount": 3})  # the right one is still taken
    assert job.doc["state"] == "ship"


def test_an_event_before_the_job_listens_or_twice_is_refused_not_kept() -> None:
    job = RulesDriver(bp(LISTEN))
    assert job.send("payment_received", {"amount": 1}) == Ignored("not_listening")
    job.result(job.lease("w1"), data={})
    assert job.doc["listen"]["event"] == "payment_received"  # nothing was kept for it
    job.send("payment_received", {"amount": 2})
    assert job.send("payment_received", {"amount": 3}) == Ignored("not_listening")
    assert job.doc["steps"]["paid"] == {"amount": 2}


def test_the_timeout_takes_on_timeout_and_a_later_event_is_refused() -> None:
    job = listening_job()
    job.fire_due(job.now + 3600 * SECOND - 1)
    assert job.doc["state"] == "paid"
    job.now += 1  # due now, though the timer has not run: the timeout has won
    assert job.send("payment_received", {"amount": 1}) == Ignored("not_listening")
    job.fire_due(job.now)
    assert (job.status, job.doc["error"]["code"]) == ("failed", "UNPAID")
    assert "event_timeout" in job.event_names()
    assert "paid" not in job.doc["steps"]


def test_without_a_timeout_or_schema_the_job_waits_for_any_payload() -> None:
    job = RulesDriver(bp(FOREVER))
    assert job.next_due() is None
    assert job.fire_due(job.now + 365 * 86_400 * SECOND) == 0
    job.send("ping", {"anything": [1, 2]})
    assert (job.status, job.doc["result"]) == ("finished", {"anything": [1, 2]})


def test_a_cancelled_listener_takes_no_event() -> None:
    job = listening_job()
    job.cancel()
    assert job.doc["listen"] is None
    assert job.send("payment_received", {"amount": 1}) == Ignored("not_listening")
