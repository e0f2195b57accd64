"""Client-chosen job ids: `POST /api/v1/<endpoint>` with `"job_id": "order-42"` makes the
job `order-42-<client tag>` once; a retry answers it, another body is a 409, another client's
`order-42` is another job."""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from engine.runtime.orchestrator import Orchestrator
from server.app import build_app_around
from tests.server.conftest import make_settings, serve, started
from tests.server.helpers import (
    ACME,
    GLOBEX,
    Client,
    error_of,
    job,
    ok_json,
    poll,
    register,
    result,
    submit,
)

URL = "/api/v1/jobs/image_pipeline"
DATA = {"url": "https://example.com/cat.png"}


async def post(api: Client, job_id: Any, headers: dict[str, str] = ACME, **more: Any) -> Any:
    body = {"initial_data": more.pop("data", DATA), "job_id": job_id, **more}
    return await api.post(URL, json=body, headers=headers)


async def jobs_of(api: Client, headers: dict[str, str] = ACME) -> list[str]:
    listing = await ok_json(await api.get("/api/v1/jobs", headers=headers))
    return [item["id"] for item in listing["jobs"]]


async def test_the_chosen_id_names_the_job_and_a_retry_answers_it(api: Client) -> None:
    # given a submit with job_id "order-42"
    first = await ok_json(await post(api, "order-42"), 202)
    job_id = first["job_id"]
    # then the job's id is the chosen id and a 12-digit tag of the client
    prefix, _, tag = job_id.rpartition("-")
    assert prefix == "order-42"
    assert re.fullmatch(r"[0-9a-f]{12}", tag)
    assert (await job(api, job_id))["status"] == "queued"
    # when the client sends it again (several at once), then each answer is 200 with it
    again = await asyncio.gather(*(post(api, "order-42") for _ in range(5)))
    for response in again:
        assert await ok_json(response, 200) == {"status": "accepted", "job_id": job_id}
        assert response.headers["Location"] == f"/api/v1/jobs/{job_id}"
    assert await jobs_of(api) == [job_id]
    # and every job this client names gets the same tag
    other = await ok_json(await post(api, "order-43"), 202)
    assert other["job_id"] == f"order-43-{tag}"


async def test_the_same_id_with_another_body_is_a_conflict(api: Client) -> None:
    first = await ok_json(await post(api, "order-1"), 202)
    error = await error_of(await post(api, "order-1", data={"url": "https://x.test/d.png"}), 409)
    assert error["code"] == "job_id_reused"
    assert "job_id 'order-1' was already used for a different request" in error["message"]
    assert error["details"] == {"field": "job_id", "job_id": first["job_id"]}
    # another option is another request too
    error = await error_of(await post(api, "order-1", result_timeout="1h"), 409)
    assert error["code"] == "job_id_reused"
    assert await jobs_of(api) == [first["job_id"]]


async def test_another_clients_same_id_is_another_job_and_reveals_nothing(api: Client) -> None:
    # given acme's job "shared"
    mine = await ok_json(await post(api, "shared"), 202)
    # when globex submits "shared" with another body, then it gets a new job of its own
    other = {"url": "https://globex.test/x.png"}
    theirs = await ok_json(await post(api, "shared", GLOBEX, data=other), 202)
    assert theirs["job_id"] != mine["job_id"]
    assert theirs["job_id"].startswith("shared-")
    # and neither sees the other's job
    assert await jobs_of(api, GLOBEX) == [theirs["job_id"]]
    assert await jobs_of(api) == [mine["job_id"]]
    missing = await api.get(f"/api/v1/jobs/{mine['job_id']}", headers=GLOBEX)
    assert missing.status == 404


@pytest.mark.parametrize(
    ("value", "why"),
    [
        ("", "must be 1 to 100 letters"),
        ("has space", "not 'has space'"),
        ("a" * 101, "must be 1 to 100"),
        ("../etc", "letters, digits, _ or -"),
        ("{tag}", "letters, digits, _ or -"),
        (42, "not a int"),
        (["x"], "not a list"),
    ],
)
async def test_a_malformed_id_is_a_400_naming_the_field(api: Client, value: Any, why: str) -> None:
    error = await error_of(await post(api, value), 400)
    assert error["code"] == "invalid_request"
    assert error["details"][0]["path"] == "$.job_id"
    assert why in error["details"][0]["message"]
    assert await jobs_of(api) == []


async def test_job_id_and_idempotency_key_together_are_a_400(api: Client) -> None:
    body = {"initial_data": DATA, "job_id": "order-9"}
    response = await api.post(URL, json=body, headers={**ACME, "Idempotency-Key": "k"})
    error = await error_of(response, 400)
    assert error["details"] == [
        {
            "path": "$.job_id",
            "message": "send either job_id or the Idempotency-Key header, not both",
        }
    ]


async def test_a_null_id_is_no_id(api: Client) -> None:
    one = await ok_json(await post(api, None), 202)
    two = await ok_json(await post(api, None), 202)
    assert one["job_id"] != two["job_id"]


@contextlib.asynccontextmanager
async def orchestrator_api(tmp_path: Path, url: str) -> AsyncIterator[Client]:
    """An orchestrator of its own on the store at `url`, served."""
    settings = make_settings(tmp_path, REDIS_PARTITIONS="16")
    async with started(settings, url) as orch:
        client = await serve(build_app_around(orch, settings))
        try:
            yield client
        finally:
            await client.close()


async def test_two_orchestrators_make_one_job_of_one_id(tmp_path: Path, any_redis_url: str) -> None:
    # given two orchestrators on one Redis (or Redis Cluster)
    async with (
        orchestrator_api(tmp_path, any_redis_url) as one,
        orchestrator_api(tmp_path, any_redis_url) as two,
    ):
        # when the same submit reaches both at once, several times, for several ids
        ids = [f"order-{n}" for n in range(8)]
        answers = await asyncio.gather(
            *(post(api, chosen) for chosen in ids for api in (one, two, one, two))
        )
        # then each id made exactly one job, which both orchestrators answer
        made = [await ok_json(a, a.status) for a in answers]
        assert sorted(a.status for a in answers) == [200] * 24 + [202] * 8
        by_id = {
            chosen: {m["job_id"] for m in made[i * 4 : i * 4 + 4]} for i, chosen in enumerate(ids)
        }
        assert all(len(jobs) == 1 for jobs in by_id.values())
        listed = sorted(await jobs_of(one))
        assert listed == sorted(next(iter(jobs)) for jobs in by_id.values())
        for jobs in by_id.values():
            assert (await job(two, next(iter(jobs))))["status"] == "queued"


async def test_pages_of_jobs_with_chosen_ids_follow_each_other(api: Client) -> None:
    # given three jobs named by the client
    made = [(await ok_json(await post(api, f"page_{n}-x"), 202))["job_id"] for n in range(3)]
    # when they are listed one a page, then each cursor leads to the next page
    seen: list[str] = []
    cursor = None
    for _ in range(4):
        query = {"limit": "1", **({"cursor": cursor} if cursor else {})}
        page = await ok_json(await api.get("/api/v1/jobs", params=query, headers=ACME))
        seen += [item["id"] for item in page["jobs"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert sorted(seen) == sorted(made)


async def test_a_job_with_a_chosen_id_runs_like_any_other(api: Client) -> None:
    # given a job named by the client, and a worker for its first task
    job_id = (await ok_json(await post(api, "photo_7"), 202))["job_id"]
    await register(api, ["fetch_image"])
    # when the worker takes the task and reports success
    task = await poll(api, ["fetch_image"])
    assert task["job_id"] == job_id
    assert task["task_id"].startswith(f"{job_id}-")
    body = {"job_id": job_id, "task_id": task["task_id"], "data": {"path": "/tmp/cat.png"}}
    assert await result(api, body) == {"status": "accepted"}
    # then the job moves on, and its history reads as usual
    assert (await job(api, job_id))["state"] == "resize"
    events = await ok_json(await api.get(f"/api/v1/jobs/{job_id}/history", headers=ACME))
    assert "task_result" in [e["event"] for e in events["events"]]


# -- owner routes by the bare chosen id --------------------------------------------------------


async def test_every_owner_route_takes_the_bare_chosen_id(api: Client) -> None:
    # given a job the client named "pay-1", listening for an event
    paid = {"amount": 12.5, "reference": "PAY-1234"}
    payment = {"user": "ada", "amount": 12.5}
    job_id = await submit(api, "jobs/payment_callback", payment, job_id="pay-1")
    bare = "/api/v1/jobs/pay-1"
    # then each route answers it by "pay-1", naming it by its full id
    assert (await job(api, "pay-1"))["id"] == job_id
    waited = await ok_json(await api.get(bare, params={"wait": "0.05"}, headers=ACME))
    assert (waited["id"], waited["state"]) == (job_id, "paid")
    for tail in ("/history", "/changes", "/explain"):
        assert (await ok_json(await api.get(bare + tail, headers=ACME)))["job_id"] == job_id
    graph = await api.get(bare + "/graph", headers=ACME)
    assert graph.status == 200
    assert (await graph.text()).startswith("digraph")
    assert (await ok_json(await api.post(bare + "/pause", headers=ACME)))["paused"] is not None
    assert (await ok_json(await api.post(bare + "/resume", headers=ACME)))["id"] == job_id
    not_asked = await api.post(bare + "/approval", json={"decision": "approve"}, headers=ACME)
    assert (await error_of(not_asked, 409))["code"] == "not_waiting_for_approval"
    sent = await api.post(bare + "/events/payment_received", json=paid, headers=ACME)
    assert (await ok_json(sent))["state"] == "receipt"
    cancelled = await ok_json(await api.post(bare + "/cancel", headers=ACME))
    assert (cancelled["id"], cancelled["status"]) == (job_id, "cancelled")
    redriven = await ok_json(await api.post(bare + "/redrive", headers=ACME))
    assert (redriven["id"], redriven["status"]) == (job_id, "queued")
    await ok_json(await api.post(bare + "/cancel", headers=ACME))
    body = {"from_state": "paid"}
    rerun = await ok_json(await api.post(bare + "/rerun", json=body, headers=ACME))
    assert (rerun["id"], rerun["state"]) == (job_id, "paid")


async def test_a_bare_id_only_ever_names_the_clients_own_job(api: Client) -> None:
    # given acme's job "shared" and globex's job "theirs"
    mine = await submit(api, "jobs/image_pipeline", DATA, job_id="shared")
    theirs = await submit(api, "jobs/image_pipeline", DATA, GLOBEX, job_id="theirs")
    # then globex's "shared" and acme's "theirs" are unknown, as any unknown id
    for headers, bare in ((GLOBEX, "shared"), (ACME, "theirs"), (ACME, "nothing")):
        for method, tail in (("GET", ""), ("GET", "/history"), ("POST", "/cancel")):
            response = await api.request(method, f"/api/v1/jobs/{bare}{tail}", headers=headers)
            assert (await error_of(response, 404))["code"] == "job_not_found"
    # and the jobs are untouched
    assert (await job(api, mine))["status"] == "queued"
    assert (await job(api, theirs, headers=GLOBEX))["status"] == "queued"
    assert (await job(api, "theirs", headers=GLOBEX))["id"] == theirs


async def test_a_full_id_costs_one_read_and_a_bare_one_a_second(
    api: Client, orchestrator: Orchestrator, monkeypatch: pytest.MonkeyPatch
) -> None:
    job_id = await submit(api, "jobs/image_pipeline", DATA, job_id="order-7")
    reads: list[str] = []
    read_job = orchestrator.store.read_job

    async def counted(wanted: str) -> Any:
        reads.append(wanted)
        return await read_job(wanted)

    monkeypatch.setattr(orchestrator.store, "read_job", counted)
    assert (await job(api, job_id))["id"] == job_id
    assert reads == [job_id]
    reads.clear()
    assert (await job(api, "order-7"))["id"] == job_id
    assert reads == ["order-7", job_id]
