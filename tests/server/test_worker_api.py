"""The worker (RXON) API: authentication, registration, heartbeats, polling, events."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from engine.runtime.orchestrator import Orchestrator
from server.app import build_app_around
from tests.server.conftest import make_settings, serve
from tests.server.helpers import (
    WORKER_TOKEN,
    Client,
    error_of,
    job,
    ok_json,
    poll,
    register,
    submit,
    worker,
)

IMAGE = {"url": "https://example.com/cat.png"}
REGISTRATION = {"worker_type": "t", "available_skills": ["fetch_image"]}


# -- authentication ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("worker_id", "token"),
    [
        ("w-solo", "solo-token"),  # individual token
        ("gpu-12", "gpu-token"),  # glob section ["gpu-*"]
        ("cpu-7", "cpu-token"),  # avtomatika spelling ["pattern:cpu-?"]
        ("gpu-12", WORKER_TOKEN),  # the global token, for ids without their own entry
        ("anyone-else", WORKER_TOKEN),
    ],
)
async def test_accepted_worker_tokens(api: Client, worker_id: str, token: str) -> None:
    response = await api.post(
        "/_worker/workers/register", json=REGISTRATION, headers=worker(worker_id, token)
    )
    body = await ok_json(response)
    assert body == {"status": "registered"}  # and no access_token (protocol §2.1)


@pytest.mark.parametrize(
    ("headers", "reason"),
    [
        (worker("w-solo", "gpu-token"), "wrong X-Worker-Token for worker 'w-solo'"),
        (worker("cpu-77", "cpu-token"), "wrong X-Worker-Token for worker 'cpu-77'"),
        ({"X-Worker-Token": "solo-token"}, "missing X-Worker-ID header"),
        ({"X-Worker-ID": "w-solo"}, "missing X-Worker-Token header"),
    ],
)
async def test_refused_workers_get_403_unauthorized(
    api: Client, headers: dict[str, str], reason: str
) -> None:
    for method, path in [
        ("POST", "/_worker/workers/register"),
        ("PATCH", "/_worker/workers/w-solo"),
        ("GET", "/_worker/workers/w-solo/tasks/next"),
        ("POST", "/_worker/tasks/result"),
        ("POST", "/_worker/events"),
    ]:
        response = await api.request(method, path, json={}, headers=headers)
        error = await error_of(response, 403)
        # The SDK re-registers (and backs off there) only on this word (protocol §6).
        assert error["message"] == f"Unauthorized: {reason}"
        assert error["code"] == "worker_unauthorized"


async def test_a_path_naming_another_worker_is_refused(api: Client) -> None:
    await register(api, ["fetch_image"])
    for method, path in [
        ("PATCH", "/_worker/workers/gpu-1"),
        ("GET", "/_worker/workers/gpu-1/tasks/next?timeout=0"),
    ]:
        error = await error_of(await api.request(method, path, json={}, headers=worker()), 403)
        assert error["message"] == (
            "Unauthorized: the path names worker 'gpu-1' but X-Worker-ID is 'w-solo'"
        )


async def test_a_body_naming_another_worker_is_a_bad_registration(api: Client) -> None:
    response = await api.post(
        "/_worker/workers/register", json={"worker_id": "gpu-1"}, headers=worker()
    )
    error = await error_of(response, 400)
    assert error["code"] == "worker_id_mismatch"


@pytest.mark.parametrize(
    "body",
    [
        {"supported_skills": [{"type": "x"}]},
        {"supported_skills": "fetch_image"},
        {"available_skills": "fetch_image"},
        {"available_skills": [1, 2]},
    ],
)
async def test_malformed_registrations(api: Client, body: dict[str, object]) -> None:
    response = await api.post("/_worker/workers/register", json=body, headers=worker())
    assert (await error_of(response, 400))["message"].split()[0] in (
        "supported_skills",
        "available_skills",
    )


async def test_rejections_are_logged_without_the_token(
    api: Client, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="interlock.auth")
    for _ in range(5):  # a worker retrying with a bad token: one line, not five
        await api.patch("/_worker/workers/w-solo", json={}, headers=worker("w-solo", "leaked"))
    lines = [r.getMessage() for r in caplog.records if r.name == "interlock.auth"]
    assert lines == ["worker 'w-solo' rejected: wrong X-Worker-Token for worker 'w-solo'"]
    assert "leaked" not in caplog.text


# -- heartbeats ----------------------------------------------------------------------------------


async def test_heartbeat_of_an_unknown_worker_asks_it_to_register(api: Client) -> None:
    # Given a worker the store does not know (its registration expired, Redis was flushed)
    response = await api.patch(
        "/_worker/workers/w-solo", json={"status": "idle", "current_tasks": []}, headers=worker()
    )
    # Then the answer holds "not found", which makes the SDK register again
    error = await error_of(response, 404)
    assert "not found" in error["message"].lower()
    assert error["code"] == "worker_not_found"
    # And once registered, its heartbeats succeed
    await register(api, ["fetch_image"])
    body = await ok_json(
        await api.patch("/_worker/workers/w-solo", json={"current_tasks": []}, headers=worker())
    )
    assert body == {"status": "ok", "cancel_task_ids": []}


async def test_heartbeat_with_malformed_tasks(api: Client) -> None:
    await register(api, ["fetch_image"])
    response = await api.patch(
        "/_worker/workers/w-solo", json={"current_tasks": "t1"}, headers=worker()
    )
    assert (await error_of(response, 400))["code"] == "invalid_field"


@pytest.mark.parametrize(("body", "stored"), [({"current_tasks": ["t1"]}, ["t1"]), ({}, None)])
async def test_a_heartbeat_records_the_tasks_only_when_it_lists_them(
    api: Client, orchestrator: Orchestrator, body: dict[str, object], stored: list[str] | None
) -> None:
    """A heartbeat without `current_tasks` says nothing of the worker's tasks: none may be
    taken for lost because it is missing from it (engine/runtime/tasks.py lease_problem)."""
    await register(api, ["fetch_image"])
    await ok_json(await api.patch("/_worker/workers/w-solo", json=body, headers=worker()))
    alive = await orchestrator.worker_alive("w-solo")
    assert alive is not None
    assert alive.get("tasks") == stored
    assert ("tasks" in alive) is (stored is not None)


# -- polling ------------------------------------------------------------------------------------


async def test_poll_without_work_answers_204(api: Client) -> None:
    await register(api, ["fetch_image"])
    async with asyncio.timeout(5):
        assert await poll(api, ["fetch_image"], wait=0.2) is None


@pytest.mark.parametrize("value", ["soon", "nan"])
async def test_poll_with_a_bad_timeout(api: Client, value: str) -> None:
    response = await api.get(
        "/_worker/workers/w-solo/tasks/next", params={"timeout": value}, headers=worker()
    )
    error = await error_of(response, 400)
    assert error["code"] == "invalid_query"
    assert "timeout" in error["message"]


async def test_poll_timeout_is_capped_by_the_server(
    orchestrator: Orchestrator, tmp_path: Path
) -> None:
    settings = make_settings(tmp_path, WORKER_POLL_MAX_SECONDS="0.2")
    client = await serve(build_app_around(orchestrator, settings))
    try:
        async with asyncio.timeout(10):  # asks for 1000 s; the cap answers after 0.2 s
            assert await poll(client, ["fetch_image"], wait=1000) is None
            assert await poll(client, ["fetch_image"], wait=-5) is None  # clamped to 0
    finally:
        await client.close()


async def test_poll_without_skills_uses_the_registered_ones(api: Client) -> None:
    # Given a registered worker and a queued task of one of its skills
    await register(api, ["resize_image", "fetch_image"])
    job_id = await submit(api, "jobs/image_pipeline", IMAGE)
    # When it polls with an empty skill list
    task = await poll(api, [])
    # Then it gets the task, a valid RXON payload (protocol §3)
    assert task["job_id"] == job_id
    assert task["type"] == "fetch_image"
    assert task["params"] == {"url": IMAGE["url"]}
    assert isinstance(task["task_id"], str)
    assert "deadline" not in task
    assert None not in task.values()
    view = await job(api, job_id)
    assert view["task"]["status"] == "leased"


@pytest.mark.parametrize("batch", [{}, {"max_tasks": "5"}], ids=["rxon", "batch"])
async def test_shutdown_answers_open_polls_at_once(
    orchestrator: Orchestrator, tmp_path: Path, batch: dict[str, str]
) -> None:
    server = TestServer(build_app_around(orchestrator, make_settings(tmp_path)))
    await server.start_server()
    async with aiohttp.ClientSession() as session:
        url = server.make_url("/_worker/workers/w-solo/tasks/next")
        params = {"timeout": "30", "available_skills": "fetch_image", **batch}
        waiting = asyncio.create_task(session.get(url, params=params, headers=worker()))
        for _ in range(10_000):  # until the poll waits in the engine (10 s at least)
            if orchestrator.dispatcher.waiters.get("fetch_image"):
                break
            await asyncio.sleep(0.001)
        assert orchestrator.dispatcher.waiters.get("fetch_image")
        assert not waiting.done()
        async with asyncio.timeout(10):  # well before the poll's 30 s
            await server.close()
            response = await waiting
        assert response.status == 204
        response.release()


# -- events and the token service ---------------------------------------------------------------


async def test_progress_events(api: Client) -> None:
    await register(api, ["fetch_image"])
    job_id = await submit(api, "jobs/image_pipeline", IMAGE)
    task = await poll(api, ["fetch_image"])
    event = {
        "event_id": "e1",
        "worker_id": "w-solo",
        "event_type": "progress",
        "payload": {"progress": 0.5, "message": "halfway"},
        "origin_task_id": task["task_id"],
        "target_job_id": job_id,
        "target_task_id": task["task_id"],
    }
    answer = await ok_json(await api.post("/_worker/events", json=event, headers=worker()))
    assert answer == {"status": "accepted"}
    progress = (await job(api, job_id))["progress"]
    assert progress["progress"] == 0.5
    assert progress["message"] == "halfway"

    # The same event from a worker that does not hold the task is ignored
    other = worker("gpu-1", "gpu-token")
    answer = await ok_json(await api.post("/_worker/events", json=event, headers=other))
    assert answer == {"status": "ignored", "reason": "worker_mismatch"}
    # So are event types the server has no use for, and events naming no task
    custom = {**event, "event_type": "log_line"}
    answer = await ok_json(await api.post("/_worker/events", json=custom, headers=worker()))
    assert answer == {"status": "ignored", "reason": "unsupported_event_type"}
    bare = {"event_type": "progress", "payload": {}}
    answer = await ok_json(await api.post("/_worker/events", json=bare, headers=worker()))
    assert answer == {"status": "ignored", "reason": "no_target_task"}
    error = await error_of(await api.post("/_worker/events", json={}, headers=worker()), 400)
    assert "event_type" in error["message"]


@pytest.mark.parametrize("path", ["/_worker/auth/token", "/_worker/auth/token/refresh"])
async def test_no_token_service(api: Client, path: str) -> None:
    error = await error_of(await api.post(path, json={}, headers=worker()), 404)
    assert error["code"] == "no_token_service"
