"""The client against a real server process: every method, blocking and asyncio alike (one
test body runs with each), and the API's errors as typed exceptions."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from interlock_client import (
    AsyncClient,
    BadRequest,
    Client,
    Conflict,
    NotFound,
    TransportError,
    Unauthorized,
    WaitTimeout,
)
from tests.client.conftest import Live
from tests.support.redis_server import free_port

pytestmark = pytest.mark.timeout(60)


class Either:
    """The blocking Client (run in a thread) or the AsyncClient, behind one awaitable face."""

    def __init__(self, mode: str, url: str, token: str | None) -> None:
        self.mode = mode
        self.sync = Client(url, token)
        self.aio = AsyncClient(url, token)

    async def __call__(self, method: str, *args: Any, **kwargs: Any) -> Any:
        if self.mode == "async":
            return await getattr(self.aio, method)(*args, **kwargs)
        return await asyncio.to_thread(getattr(self.sync, method), *args, **kwargs)

    async def collect(self, method: str, *args: Any, **kwargs: Any) -> list[Any]:
        if self.mode == "async":
            return [item async for item in getattr(self.aio, method)(*args, **kwargs)]
        return await asyncio.to_thread(lambda: list(getattr(self.sync, method)(*args, **kwargs)))

    async def close(self) -> None:
        self.sync.close()
        await self.aio.close()


@pytest.fixture(params=["sync", "async"])
async def api(request: pytest.FixtureRequest, live: Live) -> AsyncIterator[Either]:
    either = Either(request.param, live.url, live.token)
    yield either
    await either.close()


async def until_status(api: Either, job_id: str, status: str) -> dict[str, Any]:
    async with asyncio.timeout(20):
        while (job := await api("get", job_id))["status"] != status:
            await api("changes", job_id, since=None, wait=0)  # a round trip, not a sleep
        return dict(job)


async def test_a_job_is_submitted_waited_for_and_read(api: Either) -> None:
    submitted = await api("submit", "jobs/echo", {"n": 7})
    assert submitted.created

    job = await api("wait", submitted.job_id, timeout=30)

    assert (job["id"], job["status"], job["result"]) == (submitted.job_id, "finished", {"n": 7})
    assert (await api("get", submitted.job_id))["finished_at"] == job["finished_at"]
    read = await api("get", submitted.job_id, include_input=True)
    assert read["initial_data"] == {"n": 7}
    events = [e["event"] for e in await api("history", submitted.job_id)]
    assert events[0] == "job_created"
    assert events[-1] == "job_finished"
    dot = await api("graph", submitted.job_id)
    assert dot.startswith("digraph")
    assert '"work"' in dot


async def test_an_idempotency_key_makes_one_job(api: Either) -> None:
    key = f"key-{api.mode}-{free_port()}"
    first = await api("submit", "jobs/echo", {"n": 1}, idempotency_key=key)
    again = await api("submit", "jobs/echo", {"n": 1}, idempotency_key=key)
    assert (first.created, again.created) == (True, False)
    assert again.job_id == first.job_id

    with pytest.raises(Conflict) as refused:
        await api("submit", "jobs/echo", {"n": 2}, idempotency_key=key)
    assert refused.value.status == 409
    assert refused.value.code == "idempotency_key_reused"


async def test_labels_reach_the_server(api: Either) -> None:
    """Sent as the body's `labels`: a server that keeps labels shows them on the job; one
    that does not know the field refuses it by name (nothing is dropped silently)."""
    refused: BadRequest | None = None
    try:
        submitted = await api("submit", "jobs/echo", {"n": 1}, labels={"team": "billing"})
    except BadRequest as exc:
        refused = exc
    if refused is not None:
        assert "labels" in refused.message
    else:
        assert (await api("get", submitted.job_id))["labels"] == {"team": "billing"}


async def test_bad_input_is_a_bad_request_carrying_every_violation(api: Either) -> None:
    with pytest.raises(BadRequest) as refused:
        await api("submit", "jobs/echo", {"n": "seven"})
    error = refused.value
    assert (error.status, error.code) == (400, "invalid_input")
    assert "input_schema" in error.message
    assert error.details == [{"path": "$.n", "message": "'seven' is not of type 'integer'"}]


async def test_an_unknown_endpoint_or_job_is_not_found(api: Either) -> None:
    with pytest.raises(NotFound) as endpoint:
        await api("submit", "no/such/endpoint", {})
    assert endpoint.value.code == "unknown_endpoint"
    for method, args in [
        ("get", ()),
        ("wait", ()),
        ("history", ()),
        ("graph", ()),
        ("cancel", ()),
        ("approve", ("approve",)),
        ("explain", ()),
    ]:
        with pytest.raises(NotFound) as unknown:
            await api(method, "no-such-job", *args)
        assert unknown.value.code == "job_not_found", method
    with pytest.raises(NotFound):
        await api.collect("follow", "no-such-job")


async def test_a_wrong_or_missing_token_is_unauthorized(api: Either, live: Live) -> None:
    for token, code in [("not-the-token", "invalid_client_token"), (None, "missing_client_token")]:
        other = Either(api.mode, live.url, token)
        try:
            with pytest.raises(Unauthorized) as refused:
                await other("get", "anything")
            assert (refused.value.status, refused.value.code) == (401, code)
        finally:
            await other.close()


async def test_an_unreachable_server_is_a_transport_error(api: Either) -> None:
    other = Either(api.mode, f"http://127.0.0.1:{free_port()}", "t")
    try:
        with pytest.raises(TransportError) as failed:
            await other("get", "anything")
        assert failed.value.url.startswith("http://127.0.0.1:")
    finally:
        await other.close()


async def test_a_queued_job_is_explained_then_cancelled(api: Either) -> None:
    job_id = (await api("submit", "jobs/stuck")).job_id

    explained = await api("explain", job_id)
    assert explained["status"] == "queued"
    assert "nobody_serves_this" in explained["sentence"]

    with pytest.raises(WaitTimeout) as late:
        await api("wait", job_id, timeout=0.3)
    assert late.value.job["status"] == "queued"

    assert (await api("cancel", job_id))["status"] == "cancelled"
    with pytest.raises(Conflict) as again:
        await api("cancel", job_id)
    assert again.value.code == "job_not_cancellable"


async def test_an_approval_is_decided_and_the_job_followed_to_its_end(api: Either) -> None:
    job_id = (await api("submit", "jobs/gated")).job_id
    waiting = await until_status(api, job_id, "waiting_for_human")
    assert waiting["approval"]["decisions"] == ["approve", "reject"]

    with pytest.raises(BadRequest) as wrong:
        await api("approve", job_id, "maybe")
    assert wrong.value.code == "unknown_decision"
    assert wrong.value.details["allowed"] == ["approve", "reject"]

    following = asyncio.ensure_future(api.collect("follow", job_id, timeout=30))
    after = await api("approve", job_id, "approve")
    assert after["status"] != "waiting_for_human"
    views = await following

    statuses = [view["status"] for view in views]
    assert statuses[-1] == "finished"
    assert len(views) == len({str(v) for v in views})  # each view said once
    assert views[-1]["progress"]["progress"] == 0.5  # the worker reported halfway
    with pytest.raises(Conflict) as decided:
        await api("approve", job_id, "approve")
    assert decided.value.code == "not_waiting_for_approval"


async def test_the_listing_is_iterated_page_by_page(api: Either) -> None:
    mine = [(await api("submit", "jobs/listed")).job_id for _ in range(5)]

    listed = await api.collect("list", blueprint="listed", page_size=2)

    ids = [job["id"] for job in listed]
    assert set(mine) <= set(ids)
    assert len(ids) == len(set(ids))
    assert [j["created_at"] for j in listed] == sorted(
        (j["created_at"] for j in listed), reverse=True
    )
    first = await api("page", blueprint="listed", limit=2)
    assert [j["id"] for j in first["jobs"]] == ids[:2]
    assert first["next_cursor"] is not None
    with pytest.raises(BadRequest) as bad:
        await api.collect("list", status="bogus")
    assert bad.value.code == "invalid_query"


async def test_an_event_reaches_a_paused_job_which_moves_on_once_resumed(api: Either) -> None:
    chosen = f"signal-{api.mode}-{free_port()}"
    submitted = await api("submit", "jobs/signal", job_id=chosen)
    assert submitted.created
    assert submitted.job_id.startswith(f"{chosen}-")  # the server adds the client's tag
    again = await api("submit", "jobs/signal", job_id=chosen)
    assert (again.job_id, again.created) == (submitted.job_id, False)
    chosen = submitted.job_id
    listening = await until_status(api, chosen, "waiting")
    assert listening["listen"]["event"] == "go"

    with pytest.raises(BadRequest) as bad:
        await api("send_event", chosen, "go", {"n": "three"})
    assert bad.value.code == "invalid_payload"
    assert bad.value.details[0]["path"] == "$.n"
    with pytest.raises(Conflict) as other:
        await api("send_event", chosen, "stop")
    assert other.value.code == "not_listening"
    assert other.value.details["listening_for"] == "go"

    with pytest.raises(Conflict) as running:
        await api("resume", chosen)
    assert running.value.code == "not_paused"
    assert (await api("pause", chosen))["status"] == "paused"
    with pytest.raises(Conflict) as twice:
        await api("pause", chosen)
    assert twice.value.code == "already_paused"
    held = await api("send_event", chosen, "go", {"n": 3})
    assert held["status"] == "paused"  # taken, but the move on waits for the resume
    assert (await api("resume", chosen))["status"] != "paused"

    finished = await api("wait", chosen, timeout=30)
    assert finished["result"] == {"n": 3}


async def test_the_job_id_the_client_chose_is_enough_to_follow_and_control_the_job(
    api: Either,
) -> None:
    chosen = f"bare-{api.mode}-{free_port()}"
    submitted = await api("submit", "jobs/signal", job_id=chosen)
    # every method takes the id as chosen, and the job answers with its full id
    listening = await until_status(api, chosen, "waiting")
    assert listening["id"] == submitted.job_id
    assert (await api("pause", chosen))["status"] == "paused"
    assert (await api("resume", chosen))["id"] == submitted.job_id
    assert (await api("explain", chosen))["job_id"] == submitted.job_id
    await api("send_event", chosen, "go", {"n": 5})
    finished = await api("wait", chosen, timeout=30)
    assert (finished["id"], finished["result"]) == (submitted.job_id, {"n": 5})
    events = [e["event"] for e in await api("history", chosen)]
    assert events[0] == "job_created"
    assert events[-1] == "job_finished"
    # and an id chosen by nobody is still unknown
    with pytest.raises(NotFound):
        await api("get", f"{chosen}-never")


async def test_an_ended_job_is_rerun_and_a_cancelled_one_redriven(api: Either) -> None:
    job_id = (await api("submit", "jobs/echo", {"n": 4})).job_id
    assert (await api("wait", job_id, timeout=30))["status"] == "finished"
    with pytest.raises(Conflict) as finished:
        await api("redrive", job_id)
    assert finished.value.code == "job_finished"
    with pytest.raises(BadRequest) as unknown:
        await api("rerun", job_id, "nowhere")
    assert unknown.value.code == "unknown_state"

    await api("rerun", job_id, "work", {"n": 5})

    again = await api("wait", job_id, timeout=30)
    assert (again["status"], again["result"]) == ("finished", {"n": 5})
    events = [e["event"] for e in await api("history", job_id)]
    assert events.count("job_finished") == 2
    assert "job_redriven" in events

    stuck = (await api("submit", "jobs/stuck", {"tries": 1})).job_id
    await api("cancel", stuck)
    redriven = await api("redrive", stuck, {"tries": 2})
    assert (redriven["status"], redriven["state"]) == ("queued", "work")
    assert (await api("get", stuck, include_input=True))["initial_data"] == {"tries": 2}
    await api("cancel", stuck)
    assert (await api("redrive", stuck))["status"] == "queued"
    await api("cancel", stuck)


async def test_the_listing_filters_by_every_label_given(api: Either) -> None:
    run = f"{api.mode}-{free_port()}"
    both = (await api("submit", "jobs/listed", labels={"run": run, "kind": "a"})).job_id
    one = (await api("submit", "jobs/listed", labels={"run": run, "kind": "b"})).job_id

    listed = await api.collect("list", labels={"run": run}, page_size=1)
    assert [job["id"] for job in listed] == [one, both]
    page = await api("page", labels={"run": run, "kind": "a"}, blueprint="listed")
    assert [job["id"] for job in page["jobs"]] == [both]
    with pytest.raises(BadRequest) as bad:
        await api("page", labels={"run": ""})
    assert bad.value.code == "invalid_query"
