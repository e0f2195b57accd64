"""The client API: authentication, isolation, validation, listing, cancelling, blueprints."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from engine.blueprint.loader import load_blueprints
from server.client_api import task_type_of
from tests.server.helpers import (
    ACME,
    BLUEPRINTS,
    EXAMPLES,
    GLOBEX,
    Client,
    error_of,
    job,
    ok_json,
    submit,
)

IMAGE = {"url": "https://example.com/cat.png"}


# -- authentication and isolation ----------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "code"),
    [({}, "missing_client_token"), ({"X-Client-Token": "nope"}, "invalid_client_token")],
)
async def test_client_token_required(api: Client, headers: dict[str, str], code: str) -> None:
    for method, path in [
        ("POST", "/api/v1/jobs/image_pipeline"),
        ("GET", "/api/v1/jobs"),
        ("GET", "/api/v1/blueprints"),
        ("GET", "/api/v1/jobs/0123456789abcdef"),
    ]:
        response = await api.request(method, path, json={"initial_data": IMAGE}, headers=headers)
        error = await error_of(response, 401)
        assert error["code"] == code


async def test_another_clients_job_looks_exactly_like_an_unknown_one(api: Client) -> None:
    # Given a job of acme
    job_id = await submit(api, "jobs/image_pipeline", IMAGE)
    # When globex asks for it, for an unknown id, and for a malformed id
    answers = []
    for path in (f"/api/v1/jobs/{job_id}", "/api/v1/jobs/" + "f" * 32, "/api/v1/jobs/a%20b"):
        answers.append(await error_of(await api.get(path, headers=GLOBEX), 404))
    # Then every answer is the same 404
    assert answers[0] == answers[1] == answers[2]
    assert answers[0]["code"] == "job_not_found"
    for path in (f"/api/v1/jobs/{job_id}/history", f"/api/v1/jobs/{job_id}/cancel"):
        method = "POST" if path.endswith("cancel") else "GET"
        error = await error_of(await api.request(method, path, headers=GLOBEX), 404)
        assert error == answers[0]
    # And acme's job is untouched by globex's cancel
    assert (await job(api, job_id))["status"] == "queued"


# -- submitting ----------------------------------------------------------------------------


async def test_submit_answers_202_with_the_job_id_and_a_location(api: Client) -> None:
    response = await api.post(
        "/api/v1/jobs/image_pipeline", json={"initial_data": IMAGE}, headers=ACME
    )
    body = await ok_json(response, 202)
    assert body == {"status": "accepted", "job_id": body["job_id"]}
    assert response.headers["Location"] == f"/api/v1/jobs/{body['job_id']}"
    view = await job(api, body["job_id"])
    assert view["blueprint"] == "image_pipeline"
    assert view["version"] == 1
    assert view["status"] == "queued"
    assert view["state"] == "fetch"
    assert view["task"] == {
        "id": f"{body['job_id']}-1",
        "type": "fetch_image",
        "state": "fetch",
        "attempt": 1,
        "status": "queued",
    }
    assert view["created_at"].endswith("Z")
    assert view["finished_at"] is None
    assert "result" not in view
    assert "error" not in view


async def test_every_input_schema_violation_is_listed(api: Client) -> None:
    response = await api.post(
        "/api/v1/jobs/process_order",
        json={"initial_data": {"items": [], "priority": "fast"}},
        headers=ACME,
    )
    error = await error_of(response, 400)
    assert error["code"] == "invalid_input"
    assert error["details"] == [
        {"path": "$.items", "message": "[] should be non-empty"},
        {"path": "$.priority", "message": "'fast' is not one of ['express', 'standard']"},
    ]
    assert "blueprint 'order_processing'" in error["message"]
    assert error["message"].endswith("(and 1 more)")
    missing = await error_of(
        await api.post("/api/v1/jobs/process_order", json={}, headers=ACME), 400
    )
    assert missing["details"] == [{"path": "$", "message": "'items' is a required property"}]


@pytest.mark.parametrize(
    ("body", "code", "fragment"),
    [
        (b"{not json", "invalid_json", "not valid JSON"),
        (b'{"initial_data": NaN}', "invalid_json", "NaN is not valid JSON"),
        (b"[1, 2]", "invalid_body", "must be a JSON object, not an array"),
        (b'"text"', "invalid_body", "not a string"),
        (
            b'{"initial_data": {}, "priority": 1, "callback": "x"}',
            "unknown_fields",
            "'callback', 'priority'",
        ),
        (
            b'{"initial_data": [1]}',
            "invalid_request",
            "$.initial_data: must be an object, not an array",
        ),
        (b'{"initial_data": {}, "webhook_url": "ftp://x"}', "invalid_request", "$.webhook_url:"),
        (b'{"initial_data": {}, "webhook_url": 5}', "invalid_request", "must be a string"),
        (b'{"initial_data": {}, "result_timeout": "soon"}', "invalid_request", "$.result_timeout:"),
        (b'{"initial_data": {}, "dispatch_timeout": 0}', "invalid_request", "more than 0"),
    ],
)
async def test_malformed_submissions_get_a_400(
    api: Client, body: bytes, code: str, fragment: str
) -> None:
    response = await api.post(
        "/api/v1/jobs/image_pipeline",
        data=body,
        headers={**ACME, "Content-Type": "application/json"},
    )
    error = await error_of(response, 400)
    assert error["code"] == code
    assert fragment in error["message"]


async def test_field_problems_are_all_listed(api: Client) -> None:
    body = {"initial_data": IMAGE, "webhook_url": "nope", "dispatch_timeout": "1 minute"}
    error = await error_of(
        await api.post("/api/v1/jobs/image_pipeline", json=body, headers=ACME), 400
    )
    assert [d["path"] for d in error["details"]] == ["$.webhook_url", "$.dispatch_timeout"]


async def test_an_empty_body_means_empty_initial_data(api: Client) -> None:
    response = await api.post("/api/v1/jobs/image_pipeline", headers=ACME)
    error = await error_of(response, 400)
    assert error["details"] == [{"path": "$", "message": "'url' is a required property"}]


async def test_unknown_endpoint(api: Client) -> None:
    error = await error_of(await api.post("/api/v1/jobs/nothing/here", json={}, headers=ACME), 404)
    assert error["code"] == "unknown_endpoint"
    assert "POST /api/v1/jobs/nothing/here" in error["message"]


async def test_result_timeout_is_applied(api: Client) -> None:
    job_id = await submit(api, "jobs/image_pipeline", IMAGE, result_timeout="300ms")
    view = await job(api, job_id, wait="10")
    assert view["status"] == "failed"
    assert view["error"]["code"] == "JOB_TIMEOUT"
    assert view["result"] is None


# -- reading ---------------------------------------------------------------------------------


@pytest.mark.parametrize("wait", ["-1", "61", "soon", "nan"])
async def test_bad_wait(api: Client, wait: str) -> None:
    job_id = await submit(api, "jobs/image_pipeline", IMAGE)
    error = await error_of(
        await api.get(f"/api/v1/jobs/{job_id}", params={"wait": wait}, headers=ACME), 400
    )
    assert error["code"] == "invalid_query"
    assert "wait" in error["message"]


async def test_wait_on_a_running_job_answers_after_the_wait(api: Client) -> None:
    job_id = await submit(api, "jobs/image_pipeline", IMAGE)
    async with asyncio.timeout(5):
        view = await job(api, job_id, wait="0.3")
    assert view["status"] == "queued"


async def test_list_only_the_callers_jobs_newest_first_with_a_cursor(api: Client) -> None:
    ours = []
    for _ in range(3):
        ours.append(await submit(api, "jobs/image_pipeline", IMAGE))
        await asyncio.sleep(0.005)  # distinct creation milliseconds (see the report)
    ours.append(await submit(api, "jobs/reminder", {"user": "bob"}))
    theirs = await submit(api, "jobs/image_pipeline", IMAGE, headers=GLOBEX)

    seen: list[str] = []
    cursor: str | None = None
    for _ in range(10):
        params = {"limit": "1", "blueprint": "image_pipeline"}
        if cursor is not None:
            params["cursor"] = cursor
        page = await ok_json(await api.get("/api/v1/jobs", params=params, headers=ACME))
        seen += [j["id"] for j in page["jobs"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == list(reversed(ours[:3]))
    everything = await ok_json(await api.get("/api/v1/jobs", headers=ACME))
    assert [j["id"] for j in everything["jobs"]] == list(reversed(ours))
    assert everything["next_cursor"] is None
    assert theirs not in [j["id"] for j in everything["jobs"]]
    item = everything["jobs"][0]
    assert set(item) == {
        "id",
        "blueprint",
        "version",
        "status",
        "state",
        "created_at",
        "updated_at",
        "finished_at",
    }


async def test_list_filters_by_status(api: Client) -> None:
    keep = await submit(api, "jobs/image_pipeline", IMAGE)
    gone = await submit(api, "jobs/image_pipeline", IMAGE)
    await ok_json(await api.post(f"/api/v1/jobs/{gone}/cancel", headers=ACME))
    cancelled = await ok_json(await api.get("/api/v1/jobs?status=cancelled", headers=ACME))
    assert [j["id"] for j in cancelled["jobs"]] == [gone]
    assert cancelled["jobs"][0]["error"]["code"] == "CANCELLED"
    queued = await ok_json(await api.get("/api/v1/jobs?status=queued", headers=ACME))
    assert [j["id"] for j in queued["jobs"]] == [keep]


@pytest.mark.parametrize(
    "query",
    ["limit=0", "limit=201", "limit=ten", "status=done", "cursor=abc", "blueprint=a%20b"],
)
async def test_bad_list_queries(api: Client, query: str) -> None:
    error = await error_of(await api.get(f"/api/v1/jobs?{query}", headers=ACME), 400)
    assert error["code"] == "invalid_query"
    assert query.split("=")[0] in error["message"]


# -- cancelling -------------------------------------------------------------------------------


async def test_cancel_then_cancel_again(api: Client) -> None:
    job_id = await submit(api, "jobs/image_pipeline", IMAGE)
    view = await ok_json(await api.post(f"/api/v1/jobs/{job_id}/cancel", headers=ACME))
    assert view["status"] == "cancelled"
    assert view["error"] == {"code": "CANCELLED", "message": "the job was cancelled"}
    assert view["finished_at"] is not None
    assert "task" not in view
    again = await error_of(await api.post(f"/api/v1/jobs/{job_id}/cancel", headers=ACME), 409)
    assert again["code"] == "job_not_cancellable"
    assert "cancelled" in again["message"]


# -- blueprints ---------------------------------------------------------------------------------


async def test_blueprints(api: Client) -> None:
    listing = await ok_json(await api.get("/api/v1/blueprints", headers=ACME))
    names = [b["name"] for b in listing["blueprints"]]
    assert names == sorted(names)
    assert "image_pipeline" in names
    assert len(names) == EXAMPLES
    summary = next(b for b in listing["blueprints"] if b["name"] == "image_pipeline")
    assert set(summary) == {"name", "version", "description", "api_endpoint", "content_hash"}
    assert summary["api_endpoint"] == "jobs/image_pipeline"

    detail = await ok_json(await api.get("/api/v1/blueprints/image_pipeline", headers=ACME))
    assert detail["start"] == "fetch"
    assert detail["input_schema"]["required"] == ["url"]
    fetch: dict[str, Any] = detail["states"][0]
    assert fetch["name"] == "fetch"
    assert fetch["summary"] == "task: fetch_image"
    assert {"on": "success", "to": "resize"} in fetch["transitions"]


async def test_blueprint_graph_is_dot(api: Client) -> None:
    response = await api.get("/api/v1/blueprints/order_processing/graph", headers=ACME)
    assert response.status == 200
    assert response.headers["Content-Type"] == "text/vnd.graphviz; charset=utf-8"
    text = await response.text()
    assert text.startswith("digraph")
    assert "check_inventory" in text


async def test_unknown_blueprint(api: Client) -> None:
    for path in ("/api/v1/blueprints/nope", "/api/v1/blueprints/nope/graph"):
        error = await error_of(await api.get(path, headers=ACME), 404)
        assert error["code"] == "blueprint_not_found"


async def test_a_parallel_job_shows_every_pending_task(api: Client) -> None:
    job_id = await submit(api, "jobs/batch_thumbnails", {"images": ["a.png", "b.png"]})
    view = await job(api, job_id)
    assert view["status"] == "running"
    assert view["parallel"] == {
        "state": "resize_all",
        "count": 2,
        "running": 2,
        "done": 0,
        "failed": 0,
    }
    tasks = [(t["type"], t["branch"], t["status"]) for t in view["tasks"]]
    assert tasks == [("resize_image", 0, "queued"), ("resize_image", 1, "queued")]
    assert view["task"] == view["tasks"][0]


def test_task_types_of_states_and_branches() -> None:
    blueprints = load_blueprints([BLUEPRINTS]).blueprints
    assert task_type_of(blueprints["image_pipeline"], "fetch", None) == "fetch_image"
    assert task_type_of(blueprints["batch_thumbnails"], "resize_all", 3) == "resize_image"
    assert task_type_of(blueprints["document_intake"], "analyse", 1) == "extract_metadata"
    assert task_type_of(blueprints["document_intake"], "analyse", 7) is None
    assert task_type_of(blueprints["image_pipeline"], "done", None) is None
    assert task_type_of(blueprints["image_pipeline"], "nowhere", None) is None
