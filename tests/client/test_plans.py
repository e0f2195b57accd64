"""The client's loops (calls.wait, follow, iterate) driven by hand: what they ask for, and
what they do with broken connections, 503s and deadlines. No server, no sleeping."""

from __future__ import annotations

from typing import Any

import pytest

from interlock_client import calls
from interlock_client.calls import Call, Emit, Plan, Sleep
from interlock_client.errors import NotFound, ServiceUnavailable, TransportError, WaitTimeout


def job(status: str, state: str = "work") -> dict[str, Any]:
    return {"id": "j1", "status": status, "state": state}


def drive(plan: Plan[Any], answers: list[Any]) -> tuple[list[Any], Any]:
    """Run `plan`, answering its calls from `answers` in order (an exception is raised into
    it). Returns the steps it took (calls as (path, query), sleeps, emits) and its value."""
    steps: list[Any] = []
    reply: Any = None
    failure: BaseException | None = None
    while True:
        try:
            step = plan.send(reply) if failure is None else plan.throw(failure)
        except StopIteration as stop:
            return steps, stop.value
        reply, failure = None, None
        if isinstance(step, Call):
            steps.append((step.path.rsplit("/", 1)[-1], dict(step.query)))
            answer = answers.pop(0)
            if isinstance(answer, BaseException):
                failure = answer
            else:
                reply = answer
        else:
            steps.append(step)


def test_wait_long_polls_again_until_the_job_ends() -> None:
    steps, value = drive(calls.wait("j1"), [job("queued"), job("running"), job("finished")])
    assert value == job("finished")
    assert steps == [("j1", {"wait": "60"})] * 3


def test_wait_reconnects_after_a_broken_connection_or_a_503() -> None:
    unavailable = ServiceUnavailable(503, "store_unavailable", "the store is down")
    broken = TransportError("http://x", "Connection refused")
    steps, value = drive(calls.wait("j1"), [broken, unavailable, job("finished")])
    assert value == job("finished")
    poll = ("j1", {"wait": "60"})
    assert steps == [poll, Sleep(0.2), poll, Sleep(0.5), poll]


def test_wait_gives_up_at_its_deadline_with_the_last_view() -> None:
    with pytest.raises(WaitTimeout) as late:
        drive(calls.wait("j1", timeout_s=0), [job("queued")])
    assert late.value.job == job("queued")
    with pytest.raises(TransportError):  # no time left to reconnect: the error itself
        drive(calls.wait("j1", timeout_s=0.1), [TransportError("http://x", "refused")])


def test_wait_does_not_retry_a_refusal() -> None:
    with pytest.raises(NotFound):
        drive(calls.wait("j1"), [NotFound(404, "job_not_found", "no job")])


def test_follow_emits_each_different_view_until_the_end() -> None:
    change = {"job_id": "j1", "status": "queued"}
    answers = [
        {**change, "change": "1"},
        job("queued"),
        {**change, "change": "2"},
        job("queued"),  # the change came before the first read: nothing new to say
        {**change, "change": "3"},
        job("finished", "done"),
    ]
    steps, value = drive(calls.follow("j1"), answers)
    assert value == job("finished", "done")
    assert [s.value for s in steps if isinstance(s, Emit)] == [job("queued"), value]
    polls = [s[1] for s in steps if isinstance(s, tuple) and s[0] == "changes"]
    assert polls == [{}, {"wait": "60", "since": "1"}, {"wait": "60", "since": "2"}]


def test_iterate_follows_the_cursor_to_the_last_page() -> None:
    pages = [
        {"jobs": [{"id": "a"}, {"id": "b"}], "next_cursor": "c1"},
        {"jobs": [{"id": "c"}], "next_cursor": None},
    ]
    steps, _ = drive(calls.iterate(status="queued", page_size=2), pages)
    assert [s.value["id"] for s in steps if isinstance(s, Emit)] == ["a", "b", "c"]
    queries = [s[1] for s in steps if isinstance(s, tuple)]
    assert queries == [
        {"status": "queued", "limit": "2"},
        {"status": "queued", "limit": "2", "cursor": "c1"},
    ]


def test_a_submission_sends_optional_fields_only_when_set() -> None:
    plain = calls.submit("jobs/echo", {"n": 1})
    assert plain.body == {"initial_data": {"n": 1}}
    assert plain.headers == {}
    full = calls.submit(
        "/jobs/echo/", {"n": 1}, labels={"team": "a"}, idempotency_key="k", result_timeout="5m"
    )
    assert full.path == "/api/v1/jobs/echo"
    assert full.body == {"initial_data": {"n": 1}, "labels": {"team": "a"}, "result_timeout": "5m"}
    assert full.headers == {"Idempotency-Key": "k"}
    assert calls.get("a/b").path == "/api/v1/jobs/a%2Fb"  # an id is one path segment
