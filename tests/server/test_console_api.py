"""The API routes and pages the web console needs: `/`, `/console/*`, `GET /api/v1/workers`
and `GET /api/v1/jobs/{id}?include=initial_data`."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from engine.runtime.orchestrator import Orchestrator
from engine.store import changes
from server import client_api, live
from server.app import build_app_around
from server.config import Settings
from tests.server.helpers import ACME, GLOBEX, ROOT, Client, error_of, job, ok_json, poll, register
from tests.server.helpers import submit as submit_job
from tests.server.helpers import worker as worker_headers


async def test_the_console_page_is_served_with_a_strict_policy(api: Client) -> None:
    # Given the server, when a browser opens `/`
    response = await api.get("/")
    text = await response.text()
    # Then it gets the console page, with no inline script, under a CSP that allows
    # scripts from this origin only
    assert response.status == 200
    assert response.content_type == "text/html"
    assert '<script type="module" src="/console/app.js"></script>' in text
    assert "<script>" not in text
    csp = response.headers["Content-Security-Policy"]
    assert "script-src 'self' 'wasm-unsafe-eval'" in csp
    assert "default-src 'none'" in csp
    assert "unsafe-inline" not in csp
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["Referrer-Policy"] == "no-referrer"


@pytest.mark.parametrize(
    ("path", "content_type"),
    [
        ("/console/app.js", "text/javascript"),
        ("/console/app.css", "text/css"),
        ("/console/vendor/viz.js", "text/javascript"),
    ],
)
async def test_console_assets_are_served_from_the_package(
    api: Client, path: str, content_type: str
) -> None:
    response = await api.get(path)
    assert response.status == 200
    assert response.content_type == content_type
    assert len(await response.read()) > 100


async def test_console_files_travel_gzipped_and_revalidate(api: Client) -> None:
    viz = (ROOT / "server" / "console" / "vendor" / "viz.js").read_bytes()
    # Given a browser that takes gzip, when it asks for Graphviz's script
    response = await api.get("/console/vendor/viz.js", headers={"Accept-Encoding": "gzip"})
    # Then the file comes gzipped (and unpacks to the file of the package), with an ETag
    assert response.status == 200
    assert response.headers["Content-Encoding"] == "gzip"
    assert int(response.headers["Content-Length"]) < len(viz) // 2
    assert await response.read() == viz
    etag = response.headers["ETag"]
    # When it asks again with that ETag, then the answer is 304 with no body
    again = await api.get("/console/vendor/viz.js", headers={"If-None-Match": etag})
    assert again.status == 304
    assert await again.read() == b""
    # And a client that does not take gzip gets the file as it is
    plain = await api.get("/console/vendor/viz.js", headers={"Accept-Encoding": "identity"})
    assert "Content-Encoding" not in plain.headers
    assert await plain.read() == viz


@pytest.mark.parametrize(
    "path", ["/console/index.py", "/console/../console.py", "/console/vendor/LICENSE-viz.tx"]
)
async def test_only_listed_console_files_are_reachable(api: Client, path: str) -> None:
    error = await error_of(await api.get(path), 404)
    assert error["code"] == "not_found"


async def test_workers_needs_a_client_token(api: Client) -> None:
    error = await error_of(await api.get("/api/v1/workers"), 401)
    assert error["code"] == "missing_client_token"


async def test_workers_lists_who_serves_what_and_queue_depths(api: Client) -> None:
    # Given no worker yet and one job queued for fetch_image
    await submit_job(api, "jobs/image_pipeline", {"url": "https://x.test/a.png"})
    body = await ok_json(await api.get("/api/v1/workers", headers=ACME))
    assert body["workers"] == []
    queues = {q["task_type"]: q for q in body["queues"]}
    # every task type of the loaded blueprints is counted, served or not
    assert queues["fetch_image"] == {"task_type": "fetch_image", "depth": 1, "workers": False}
    assert queues["charge_card"]["depth"] == 0
    # When a worker registers for fetch_image and takes the task
    await register(api, ["fetch_image"])
    task = await poll(api, ["fetch_image"])
    heartbeat = {"worker_id": "w-solo", "current_tasks": [task["task_id"]]}
    beat = await api.patch("/_worker/workers/w-solo", json=heartbeat, headers=worker_headers())
    assert beat.status == 200, await beat.text()
    # Then any client sees the worker, its task types, its heartbeat and how many tasks it
    # holds (not their ids, which name jobs of other clients), and the queue is empty
    for headers in (ACME, GLOBEX):
        body = await ok_json(await api.get("/api/v1/workers", headers=headers))
        (seen,) = body["workers"]
        assert seen["id"] == "w-solo"
        assert seen["worker_type"] == "test"
        assert seen["task_types"] == ["fetch_image"]
        assert seen["connected"] is True
        assert seen["last_heartbeat"].endswith("Z")
        assert seen["tasks_held"] == 1
        assert task["job_id"] not in str(body)
        queues = {q["task_type"]: q for q in body["queues"]}
        assert queues["fetch_image"] == {"task_type": "fetch_image", "depth": 0, "workers": True}


async def test_forgotten_workers_leave_the_list(api: Client, orchestrator: Orchestrator) -> None:
    # Given two registered workers
    await register(api, ["fetch_image"])
    await register(api, ["resize_image"], worker_headers("gpu-1", "gpu-token"))
    body = await ok_json(await api.get("/api/v1/workers", headers=ACME))
    assert [w["id"] for w in body["workers"]] == ["gpu-1", "w-solo"]  # most recent first
    store = orchestrator.store
    # When one's registration expires (WORKER_TTL) and the other's heartbeat record does
    await store.redis.delete(store.keys.worker("gpu-1"))
    await store.redis.delete(store.keys.worker_alive("w-solo"))
    # Then the first is no longer listed, the second shows as silent
    body = await ok_json(await api.get("/api/v1/workers", headers=ACME))
    (silent,) = body["workers"]
    assert (silent["id"], silent["connected"], silent["last_heartbeat"]) == ("w-solo", False, None)
    # And an index entry older than WORKER_TTL is pruned from the index itself
    await store.redis.zadd(store.keys.workers, {"w-solo": 0})
    body = await ok_json(await api.get("/api/v1/workers", headers=ACME))
    assert body["workers"] == []
    assert await store.redis.zscore(store.keys.workers, "w-solo") is None


async def test_include_initial_data_adds_the_input_to_the_owners_view(api: Client) -> None:
    data = {"url": "https://x.test/<script>.png", "width": 3}
    job_id = await submit_job(api, "jobs/image_pipeline", data)
    assert "initial_data" not in await job(api, job_id)
    assert (await job(api, job_id, include="initial_data"))["initial_data"] == data
    response = await api.get(f"/api/v1/jobs/{job_id}", params={"include": "secrets"}, headers=ACME)
    error = await error_of(response, 400)
    assert error["code"] == "invalid_query"
    assert "include" in error["message"]
    # another client still gets the 404 of an unknown job
    other = await api.get(
        f"/api/v1/jobs/{job_id}", params={"include": "initial_data"}, headers=GLOBEX
    )
    assert (await error_of(other, 404))["code"] == "job_not_found"


# -- long polls for live pages ----------------------------------------------------------------


@pytest.fixture
def poll_waits(monkeypatch: pytest.MonkeyPatch) -> asyncio.Event:
    """Set once a long poll has read what it waits on and waits for a change notice.
    Polls re-read only on a notice (not every second), so a test sees that the notice
    itself wakes them."""
    monkeypatch.setattr(live, "RECHECK_S", 60.0)
    started = asyncio.Event()
    original = changes.changed

    async def changed(future: asyncio.Future[None], timeout_s: float) -> bool:
        started.set()
        return await original(future, timeout_s)

    monkeypatch.setattr(live, "changed", changed)
    return started


async def test_job_changes_answers_when_a_worker_takes_the_task(
    api: Client, poll_waits: asyncio.Event
) -> None:
    # Given a queued job, and what its page has seen of it
    job_id = await submit_job(api, "jobs/image_pipeline", {"url": "https://x.test/a.png"})
    url = f"/api/v1/jobs/{job_id}/changes"
    seen = await ok_json(await api.get(url, headers=ACME))
    assert seen["status"] == "queued"
    # When the page waits for a change and a worker takes the task
    waiting = asyncio.create_task(
        api.get(url, params={"since": seen["change"], "wait": "50"}, headers=ACME)
    )
    async with asyncio.timeout(10):
        await poll_waits.wait()
    await register(api, ["fetch_image"])
    await poll(api, ["fetch_image"])
    # Then the wait answers with the new change (well before its 50 s)
    async with asyncio.timeout(10):
        answer = await ok_json(await waiting)
    assert answer["change"] != seen["change"]
    assert answer["status"] == "running"


async def test_job_changes_waits_while_nothing_changes(api: Client) -> None:
    job_id = await submit_job(api, "jobs/image_pipeline", {"url": "https://x.test/a.png"})
    url = f"/api/v1/jobs/{job_id}/changes"
    seen = await ok_json(await api.get(url, headers=ACME))
    answer = await ok_json(
        await api.get(url, params={"since": seen["change"], "wait": "0.3"}, headers=ACME)
    )
    assert answer == seen


async def test_job_changes_answers_at_once_for_an_ended_job(
    api: Client, poll_waits: asyncio.Event
) -> None:
    job_id = await submit_job(api, "jobs/image_pipeline", {"url": "https://x.test/a.png"})
    cancelled = await api.post(f"/api/v1/jobs/{job_id}/cancel", headers=ACME)
    assert cancelled.status == 200
    url = f"/api/v1/jobs/{job_id}/changes"
    seen = await ok_json(await api.get(url, headers=ACME))
    async with asyncio.timeout(10):
        again = await ok_json(
            await api.get(url, params={"since": seen["change"], "wait": "50"}, headers=ACME)
        )
    assert again == seen
    assert again["status"] == "cancelled"


async def test_job_list_long_poll_answers_when_a_job_appears(
    api: Client, poll_waits: asyncio.Event
) -> None:
    first = await submit_job(api, "jobs/image_pipeline", {"url": "https://x.test/a.png"})
    page = await ok_json(await api.get("/api/v1/jobs", params={"wait": "0"}, headers=ACME))
    assert [j["id"] for j in page["jobs"]] == [first]
    waiting = asyncio.create_task(
        api.get("/api/v1/jobs", params={"since": page["change"], "wait": "50"}, headers=ACME)
    )
    async with asyncio.timeout(10):
        await poll_waits.wait()
    second = await submit_job(api, "jobs/image_pipeline", {"url": "https://x.test/b.png"})
    async with asyncio.timeout(10):
        answer = await ok_json(await waiting)
    assert [j["id"] for j in answer["jobs"]] == [second, first]
    assert answer["change"] != page["change"]
    # Without `wait`, the listing is as it always was: no change token
    plain = await ok_json(await api.get("/api/v1/jobs", headers=ACME))
    assert "change" not in plain


@pytest.mark.parametrize(
    ("path", "query"),
    [
        ("/api/v1/jobs", {"wait": "61"}),
        ("/api/v1/jobs", {"wait": "x"}),
        ("/api/v1/jobs", {"wait": "1", "since": "x" * 65}),
        ("/api/v1/jobs/{id}/changes", {"wait": "-1"}),
        ("/api/v1/jobs/{id}/changes", {"since": "x" * 65}),
    ],
)
async def test_long_poll_parameters_are_checked(
    api: Client, path: str, query: dict[str, str]
) -> None:
    job_id = await submit_job(api, "jobs/image_pipeline", {"url": "https://x.test/a.png"})
    response = await api.get(path.format(id=job_id), params=query, headers=ACME)
    error = await error_of(response, 400)
    assert error["code"] == "invalid_query"
    named = "since" if "since" in query else "wait"
    assert named in error["message"]


async def test_job_changes_of_another_clients_job_is_not_found(api: Client) -> None:
    job_id = await submit_job(api, "jobs/image_pipeline", {"url": "https://x.test/a.png"})
    response = await api.get(f"/api/v1/jobs/{job_id}/changes", headers=GLOBEX)
    assert (await error_of(response, 404))["code"] == "job_not_found"


async def test_a_long_poll_whose_caller_left_ends_at_the_next_change(
    orchestrator: Orchestrator,
    settings: Settings,
    poll_waits: asyncio.Event,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """aiohttp does not cancel a handler whose client disconnected (as `interlock serve`
    runs it; the test client's server does cancel them): a page that navigated away must
    not leave its poll listing jobs until the wait ends."""
    ended = asyncio.Event()
    original = live.page_when_changed

    async def page_when_changed(*args: Any, **kwargs: Any) -> dict[str, Any]:
        try:
            return await original(*args, **kwargs)
        finally:
            ended.set()

    monkeypatch.setattr(client_api, "page_when_changed", page_when_changed)
    runner = web.AppRunner(build_app_around(orchestrator, settings))
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        host, port = runner.addresses[0][:2]
        async with aiohttp.ClientSession(f"http://{host}:{port}", headers=ACME) as http:
            async with http.get("/api/v1/jobs", params={"wait": "0"}) as response:
                page = await response.json()
            ended.clear()
            # Given a page waiting on the jobs list, which then goes away
            query = {"since": page["change"], "wait": "50"}
            waiting = asyncio.create_task(http.get("/api/v1/jobs", params=query))
            async with asyncio.timeout(10):
                await poll_waits.wait()
            waiting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await waiting
            # When a job changes (another client's: this page would not change), then the
            # poll ends instead of listing again for 50 s
            body = {"initial_data": {"url": "https://x.test/a.png"}}
            async with http.post("/api/v1/jobs/image_pipeline", json=body, headers=GLOBEX) as r:
                assert r.status == 202
            async with asyncio.timeout(10):
                await ended.wait()
    finally:
        await runner.cleanup()
