"""Idempotent submits: a retried `POST /api/v1/<endpoint>` with the same `Idempotency-Key`
answers the job the first one made, never a second job."""

from __future__ import annotations

import asyncio
from typing import Any

from tests.server.helpers import ACME, GLOBEX, Client, error_of, job, ok_json

URL = "/api/v1/jobs/image_pipeline"
BODY = {"initial_data": {"url": "https://example.com/cat.png"}}


async def post(
    api: Client, key: str, body: dict[str, Any] = BODY, headers: dict[str, str] = ACME
) -> Any:
    return await api.post(URL, json=body, headers={**headers, "Idempotency-Key": key})


async def jobs_of(api: Client, headers: dict[str, str] = ACME) -> list[str]:
    listing = await ok_json(await api.get("/api/v1/jobs", headers=headers))
    return [item["id"] for item in listing["jobs"]]


async def test_a_retried_submit_answers_the_same_job(api: Client) -> None:
    # given a submit that made a job
    first = await ok_json(await post(api, "order-17"), 202)
    # when the client sends it again (it never saw the answer), even several at once
    again = await asyncio.gather(*(post(api, "order-17") for _ in range(5)))
    # then each answer is 200 with the first job's id, and there is one job
    for response in again:
        assert await ok_json(response, 200) == {"status": "accepted", "job_id": first["job_id"]}
        assert response.headers["Location"] == f"/api/v1/jobs/{first['job_id']}"
    assert await jobs_of(api) == [first["job_id"]]
    assert (await job(api, first["job_id"]))["status"] == "queued"


async def test_concurrent_first_submits_make_one_job(api: Client) -> None:
    answers = await asyncio.gather(*(post(api, "burst") for _ in range(6)))
    statuses = sorted(a.status for a in answers)
    assert statuses == [200] * 5 + [202]
    ids = {(await a.json())["job_id"] for a in answers}
    assert len(ids) == 1
    assert await jobs_of(api) == list(ids)


async def test_the_same_key_with_another_body_is_a_conflict(api: Client) -> None:
    first = await ok_json(await post(api, "k1"), 202)
    other = {"initial_data": {"url": "https://example.com/dog.png"}}
    error = await error_of(await post(api, "k1", other), 409)
    assert error["code"] == "idempotency_key_reused"
    assert "Idempotency-Key 'k1' was already used for a different request" in error["message"]
    assert error["details"] == {"header": "Idempotency-Key", "job_id": first["job_id"]}
    assert await jobs_of(api) == [first["job_id"]]


async def test_keys_belong_to_their_client(api: Client) -> None:
    mine = await ok_json(await post(api, "shared"), 202)
    theirs = await ok_json(await post(api, "shared", headers=GLOBEX), 202)
    assert mine["job_id"] != theirs["job_id"]
    assert await jobs_of(api, GLOBEX) == [theirs["job_id"]]


async def test_a_malformed_key_is_a_400_naming_the_header(api: Client) -> None:
    for key in ("", "has space", "x" * 256):
        error = await error_of(await post(api, key), 400)
        assert error["code"] == "invalid_header"
        assert "Idempotency-Key" in error["message"]
    assert await jobs_of(api) == []


async def test_without_a_key_each_submit_is_a_new_job(api: Client) -> None:
    one = await ok_json(await api.post(URL, json=BODY, headers=ACME), 202)
    two = await ok_json(await api.post(URL, json=BODY, headers=ACME), 202)
    assert one["job_id"] != two["job_id"]
