"""Whole jobs driven through HTTP only, as a client and a worker would."""

from __future__ import annotations

import asyncio

from engine.runtime.orchestrator import Orchestrator
from tests.server.helpers import (
    ACME,
    Client,
    job,
    ok_json,
    poll,
    register,
    result,
    submit,
    worker,
)

IMAGE = {"url": "https://example.com/cat.png"}
STEPS = {"fetch_image": {"path": "/tmp/cat.png"}, "resize_image": {"path": "/tmp/small.png"}}


async def test_a_pipeline_runs_from_submission_to_result(api: Client) -> None:
    # Given a worker serving the three image skills, and a submitted job
    skills = ["fetch_image", "resize_image", "publish_image"]
    await register(api, skills)
    job_id = await submit(api, "jobs/image_pipeline", IMAGE)

    # When the worker takes each task and reports success
    seen = []
    for _ in skills:
        task = await poll(api, skills)
        assert task is not None
        assert task["job_id"] == job_id
        seen.append(task["type"])
        if task["type"] in STEPS:
            data = STEPS[task["type"]]
        else:
            data = {"url": f"https://cdn/{task['params']['name']}"}
        answer = await result(
            api, {"job_id": job_id, "task_id": task["task_id"], "worker_id": "w-solo", "data": data}
        )
        assert answer == {"status": "accepted"}
        if task["type"] == "resize_image":
            assert task["params"] == {"path": "/tmp/cat.png", "width": 256}

    # Then the job finished with the blueprint's output
    assert seen == skills
    view = await job(api, job_id)
    assert view["status"] == "finished"
    assert view["state"] == "done"
    assert view["result"] == {"thumbnail": f"https://cdn/thumb-{job_id}.png"}
    assert view["finished_at"] is not None
    assert "task" not in view
    assert "error" not in view

    # And its history tells the story in order
    history = await ok_json(await api.get(f"/api/v1/jobs/{job_id}/history", headers=ACME))
    assert history["job_id"] == job_id
    events = history["events"]
    assert [e["event"] for e in events[:3]] == ["job_created", "state_entered", "task_queued"]
    assert events[-1]["event"] == "job_finished"
    results = [e for e in events if e["event"] == "task_result"]
    assert [(e["state"], e["worker"], e["attempt"]) for e in results] == [
        ("fetch", "w-solo", 1),
        ("resize", "w-solo", 1),
        ("publish", "w-solo", 1),
    ]
    assert all(e["timestamp"].endswith("Z") and "at" not in e for e in events)
    assert all(isinstance(e["duration_ms"], int) for e in results)


async def test_wait_answers_as_soon_as_the_job_ends(
    api: Client, orchestrator: Orchestrator
) -> None:
    # Given a job whose one remaining task is held by a worker
    await register(api, ["check_inventory", "ship"])
    job_id = await submit(api, "jobs/process_order", {"items": ["a"], "priority": "express"})
    task = await poll(api, ["check_inventory"])

    # When a client waits for it (up to 30 s) and the worker then reports a custom status
    waiting = asyncio.create_task(job(api, job_id, wait="30"))
    for _ in range(10_000):  # until the request waits in the engine (10 s at least)
        if job_id in orchestrator._done_waiters:
            break
        await asyncio.sleep(0.001)
    assert job_id in orchestrator._done_waiters
    assert not waiting.done()
    answer = await result(
        api, {"job_id": job_id, "task_id": task["task_id"], "status": "out_of_stock"}
    )
    assert answer == {"status": "accepted"}

    # Then the waiting request answers at once with the terminal job
    async with asyncio.timeout(10):
        view = await waiting
    assert view["status"] == "failed"
    assert view["state"] == "no_stock"
    assert view["error"]["code"] == "OUT_OF_STOCK"
    assert view["error"]["message"] == "Some items are out of stock"


async def test_duplicate_and_foreign_results_are_ignored(api: Client) -> None:
    await register(api, ["fetch_image"])
    gpu = worker("gpu-1", "gpu-token")
    job_id = await submit(api, "jobs/image_pipeline", IMAGE)
    task = await poll(api, ["fetch_image"])
    body = {"job_id": job_id, "task_id": task["task_id"], "data": STEPS["fetch_image"]}

    # A result from a worker that does not hold the task changes nothing
    assert await result(api, body, gpu) == {"status": "ignored", "reason": "worker_mismatch"}
    assert (await job(api, job_id))["state"] == "fetch"
    # The holder's result is accepted once; the SDK's identical retry is ignored
    assert await result(api, body) == {"status": "accepted"}
    assert await result(api, body) == {"status": "ignored", "reason": "duplicate"}
    # A result for a job that does not exist is ignored too
    unknown = {**body, "job_id": "f" * 32}
    assert await result(api, unknown) == {"status": "ignored", "reason": "job_not_found"}
    assert (await job(api, job_id))["state"] == "resize"


async def test_malformed_results_get_a_400(api: Client) -> None:
    for body, fragment in [
        ({"task_id": "t"}, "'job_id' is required"),
        ({"job_id": "j", "task_id": 5}, "'task_id' must be a string"),
        ({"job_id": "j", "task_id": "t", "status": ""}, "'status' must not be empty"),
    ]:
        response = await api.post("/_worker/tasks/result", json=body, headers=worker())
        assert response.status == 400, await response.text()
        assert fragment in (await response.json())["error"]["message"]


async def test_a_failed_attempt_is_retried_and_shown_as_retrying(api: Client) -> None:
    await register(api, ["fetch_image"])
    job_id = await submit(api, "jobs/image_pipeline", IMAGE)
    task = await poll(api, ["fetch_image"])
    failure = {
        "job_id": job_id,
        "task_id": task["task_id"],
        "status": "failure",
        "error": {"code": "TRANSIENT_ERROR", "message": "network blip"},
    }
    assert await result(api, failure) == {"status": "accepted"}
    view = await job(api, job_id)
    assert view["status"] == "retrying"
    assert view["task"]["status"] == "retrying"
    assert view["task"]["attempt"] == 2
    assert view["task"]["type"] == "fetch_image"
    assert view["task"]["retry_at"] >= view["updated_at"]
    retry = await poll(api, ["fetch_image"], wait=10)  # after the ~1 s backoff
    assert retry["task_id"] != task["task_id"]
    assert retry["metadata"]["attempt"] == 2


async def test_cancelling_a_running_task_tells_its_worker(api: Client) -> None:
    # Given a task held by a worker
    await register(api, ["fetch_image"])
    job_id = await submit(api, "jobs/image_pipeline", IMAGE)
    task = await poll(api, ["fetch_image"])
    # When the client cancels the job
    view = await ok_json(await api.post(f"/api/v1/jobs/{job_id}/cancel", headers=ACME))
    assert view["status"] == "cancelled"
    # Then the worker's next heartbeat asks it to cancel the task, once
    beat = {"current_tasks": [task["task_id"]]}
    answer = await ok_json(await api.patch("/_worker/workers/w-solo", json=beat, headers=worker()))
    assert answer == {"status": "ok", "cancel_task_ids": [task["task_id"]]}
    answer = await ok_json(await api.patch("/_worker/workers/w-solo", json=beat, headers=worker()))
    assert answer["cancel_task_ids"] == []
    # And the cancelled task's result is ignored with the reason the SDK logs quietly
    late = {"job_id": job_id, "task_id": task["task_id"], "status": "cancelled"}
    assert await result(api, late) == {"status": "ignored", "reason": "job_cancelled"}
