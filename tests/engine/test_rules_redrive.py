"""Redrive and rerun as pure rules: where an ended job starts again and what it keeps."""

from __future__ import annotations

from typing import Any

import pytest

from engine.runtime.jobdoc import Ignored
from engine.runtime.redrive import MAX_REDRIVES, merge_patch
from tests.engine.test_rules import bp
from tests.support.rules_driver import RulesDriver

SECOND = 1000

PIPELINE = """
blueprint: pipeline
start: fetch
states:
  fetch:
    task: fetch
    params: {url: "${ initial_data.url }"}
    on: {success: charge}
  charge:
    task: charge
    retry: {max_attempts: 1}
    params: {amount: "${ initial_data.amount }"}
    on: {success: done, failure: broken}
  done: {end: finished, output: {fetched: "${ steps.fetch }", charged: "${ steps.charge }"}}
  broken: {end: failed, error: {code: CHARGE_FAILED}}
"""

NO_FAILURE_EDGE = """
blueprint: plain
start: work
states:
  work:
    task: work
    retry: {max_attempts: 1}
    on: {success: done}
  done: {end: finished}
"""

REJECTED = """
blueprint: rejected
start: review
states:
  review:
    approval: {}
    on: {approve: done, reject: no}
  done: {end: finished}
  no: {end: failed}
"""

PERMANENT = {"code": "PERMANENT_ERROR", "message": "declined"}


def failed_at_charge(data: dict[str, Any] | None = None) -> RulesDriver:
    job = RulesDriver(bp(PIPELINE), data or {"url": "u", "amount": 5})
    job.result(job.lease("w1"), data={"path": "/p"})
    job.result(job.lease("w1"), "failure", error=PERMANENT)
    assert (job.status, job.doc["state"]) == ("failed", "broken")
    return job


def test_a_redrive_starts_again_at_the_state_that_failed_keeping_outputs_and_history() -> None:
    job = failed_at_charge()
    before = len(job.history)
    job.redrive()
    assert (job.status, job.doc["state"], job.doc["error"]) == ("queued", "charge", None)
    assert job.doc["steps"]["fetch"] == {"path": "/p"}  # kept: fetch is not run again
    assert job.queued("fetch") == []
    job.result(job.lease("w1", "charge"), data={"id": "ch"})
    assert job.status == "finished"
    assert job.doc["result"] == {"fetched": {"path": "/p"}, "charged": {"id": "ch"}}
    redriven = job.history[before]
    assert redriven["event"] == "job_redriven"
    assert (redriven["state"], redriven["mode"], redriven["previous_status"]) == (
        "charge",
        "redrive",
        "failed",
    )
    assert redriven["previous_error"] == "CHARGE_FAILED"
    assert job.event_names()[:before] == [e["event"] for e in job.history[:before]]


def test_a_redrive_with_new_initial_data_renders_it() -> None:
    job = failed_at_charge()
    job.redrive(initial_data=merge_patch(job.doc["initial_data"], {"amount": 7}))
    assert job.lease("w1", "charge")["params"] == {"amount": 7}
    assert job.doc["initial_data"] == {"url": "u", "amount": 7}


def test_a_task_that_failed_the_job_without_a_failure_edge_is_where_it_starts() -> None:
    job = RulesDriver(bp(NO_FAILURE_EDGE))
    job.result(job.lease("w1"), "failure", error=PERMANENT)
    assert (job.status, job.doc["state"]) == ("failed", "work")
    job.redrive()
    assert job.doc["state"] == "work"
    job.result(job.lease("w1"), data={})
    assert job.status == "finished"


def test_a_cancelled_job_starts_again_where_it_was_cancelled() -> None:
    job = RulesDriver(bp(PIPELINE), {"url": "u", "amount": 5})
    job.result(job.lease("w1"), data={})
    job.cancel()
    job.redrive()
    assert (job.status, job.doc["state"]) == ("queued", "charge")


def test_rerun_starts_any_ended_job_at_a_named_state() -> None:
    job = RulesDriver(bp(PIPELINE), {"url": "u", "amount": 5})
    job.result(job.lease("w1"), data={"n": 1})
    job.result(job.lease("w1"), data={"id": "a"})
    assert job.status == "finished"
    assert job.redrive() == Ignored("job_finished")  # a redrive is for failures
    job.redrive(from_state="fetch")
    assert job.doc["state"] == "fetch"
    assert job.events("job_redriven")[-1]["mode"] == "rerun"
    job.result(job.lease("w1"), data={"n": 2})
    job.result(job.lease("w1"), data={"id": "b"})
    assert job.doc["result"] == {"fetched": {"n": 2}, "charged": {"id": "b"}}


@pytest.mark.parametrize(
    ("setup", "from_state", "reason"),
    [
        ("running", None, "job_not_ended"),
        ("failed", "nowhere", "unknown_state"),
        ("rejected", None, "nothing_to_redrive"),
    ],
)
def test_what_cannot_run_again_is_refused(setup: str, from_state: str | None, reason: str) -> None:
    if setup == "running":
        job = RulesDriver(bp(PIPELINE), {"url": "u", "amount": 5})
    elif setup == "rejected":
        job = RulesDriver(bp(REJECTED))
        job.decide("reject")
        assert job.status == "failed"
    else:
        job = failed_at_charge()
    before = job.commits
    assert job.redrive(from_state) == Ignored(reason)
    assert job.commits == before


def test_a_job_runs_again_at_most_max_redrives_times() -> None:
    job = RulesDriver(bp(NO_FAILURE_EDGE))
    for _ in range(MAX_REDRIVES):
        job.result(job.lease("w1"), "failure", error=PERMANENT)
        job.redrive()
    job.result(job.lease("w1"), "failure", error=PERMANENT)
    assert job.redrive() == Ignored("redrive_limit")


def test_a_result_timeout_counts_again_from_the_redrive() -> None:
    job = RulesDriver(bp(NO_FAILURE_EDGE), result_timeout_ms=60 * SECOND)
    job.fire_due(job.now + 60 * SECOND)
    assert job.doc["error"]["code"] == "JOB_TIMEOUT"
    job.now += 3600 * SECOND
    job.redrive()
    assert job.doc["deadline"] == job.now + 60 * SECOND
    assert job.doc["transitions"] == 1


def test_a_subflow_child_is_redriven_through_its_parent() -> None:
    child = RulesDriver(bp(NO_FAILURE_EDGE), parent={"job_id": "p", "state": "call", "depth": 1})
    child.result(child.lease("w1"), "failure", error=PERMANENT)
    assert child.redrive() == Ignored("subflow_child")


@pytest.mark.parametrize(
    ("target", "patch", "merged"),
    [
        (
            {"a": 1, "b": {"c": 2, "d": 3}},
            {"b": {"c": None, "e": 4}},
            {"a": 1, "b": {"d": 3, "e": 4}},
        ),
        ({"a": [1, 2]}, {"a": [3]}, {"a": [3]}),
        ({"a": 1}, {}, {"a": 1}),
    ],
)
def test_merge_patch_follows_rfc_7396(target: Any, patch: Any, merged: Any) -> None:
    assert merge_patch(target, patch) == merged
