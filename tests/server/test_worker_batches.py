"""Interlock's worker API extensions: batch polls (`max_tasks`) and batch results.

The engine may lease one task per poll or several; these tests hold either way.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from engine.runtime.orchestrator import Orchestrator
from engine.store.client import StoreUnavailable
from tests.server.helpers import (
    Client,
    error_of,
    job,
    ok_json,
    register,
    submit,
    worker,
)

IMAGE = {"url": "https://example.com/cat.png"}
NEXT = "/_worker/workers/w-solo/tasks/next"
RESULTS = "/_worker/tasks/results"


async def batch_poll(
    api: Client,
    max_tasks: int,
    wait: float = 5,
    headers: dict[str, str] | None = None,
) -> list[dict[str, Any]]:
    """The tasks of one batch poll: [] on 204, else a non-empty list of at most max_tasks."""
    headers = headers or worker()
    response = await api.get(
        f"/_worker/workers/{headers['X-Worker-ID']}/tasks/next",
        params={
            "timeout": str(wait),
            "available_skills": "fetch_image",
            "max_tasks": str(max_tasks),
        },
        headers=headers,
    )
    if response.status == 204:
        return []
    body = await ok_json(response)
    assert set(body) == {"tasks"}, body
    tasks: list[dict[str, Any]] = body["tasks"]
    assert 1 <= len(tasks) <= max_tasks, tasks
    return tasks


async def take_all(api: Client, count: int, max_tasks: int) -> list[dict[str, Any]]:
    """Poll with `max_tasks` until `count` tasks came; checks no poll brought too many."""
    tasks: list[dict[str, Any]] = []
    async with asyncio.timeout(20):
        while len(tasks) < count:
            tasks += await batch_poll(api, max_tasks)
    return tasks


def success(task: dict[str, Any], **data: Any) -> dict[str, Any]:
    return {
        "job_id": task["job_id"],
        "task_id": task["task_id"],
        "worker_id": "w-solo",
        "data": data or {"path": f"/tmp/{task['job_id']}.png"},
    }


async def post_results(api: Client, items: Any, headers: dict[str, str] | None = None) -> Any:
    response = await api.post(RESULTS, json={"results": items}, headers=headers or worker())
    body = await ok_json(response)
    assert set(body) == {"results"}, body
    return body["results"]


# -- batch polls --------------------------------------------------------------------------------


async def test_a_batch_poll_brings_every_queued_task_exactly_once(api: Client) -> None:
    # Given five queued tasks
    await register(api, ["fetch_image"])
    jobs = {await submit(api, "jobs/image_pipeline", IMAGE) for _ in range(5)}
    # When the worker polls for up to 2 tasks at a time until it has them all
    tasks = await take_all(api, 5, max_tasks=2)
    # Then each task came exactly once, a valid RXON payload, leased to this worker
    assert sorted(t["job_id"] for t in tasks) == sorted(jobs)
    assert len({t["task_id"] for t in tasks}) == 5
    for task in tasks:
        assert task["type"] == "fetch_image"
        assert task["params"] == {"url": IMAGE["url"]}
        assert None not in task.values()
        assert (await job(api, task["job_id"]))["task"]["status"] == "leased"
    # And nothing is left to take
    assert await batch_poll(api, 100, wait=0.2) == []


async def test_a_batch_poll_takes_several_queued_tasks_at_once(api: Client) -> None:
    await register(api, ["fetch_image"])
    for _ in range(4):
        await submit(api, "jobs/image_pipeline", IMAGE)
    tasks = await batch_poll(api, 10)
    assert len(tasks) >= 1  # how many a poll gets at once is the engine's choice
    rest = await take_all(api, 4 - len(tasks), max_tasks=10)
    assert len({t["task_id"] for t in tasks + rest}) == 4


async def test_a_batch_poll_without_work_answers_204(api: Client) -> None:
    await register(api, ["fetch_image"])
    async with asyncio.timeout(5):
        response = await api.get(
            NEXT, params={"timeout": "0.2", "max_tasks": "3"}, headers=worker()
        )
    assert response.status == 204
    assert await response.read() == b""


async def test_a_poll_without_max_tasks_is_answered_as_before(api: Client) -> None:
    await register(api, ["fetch_image"])
    jobs = {await submit(api, "jobs/image_pipeline", IMAGE) for _ in range(2)}
    response = await api.get(
        NEXT, params={"timeout": "5", "available_skills": "fetch_image"}, headers=worker()
    )
    task = await ok_json(response)  # one task object (RXON), never a list
    assert task["job_id"] in jobs
    assert task["type"] == "fetch_image"
    assert "tasks" not in task


@pytest.mark.parametrize("value", ["0", "101", "-1", "two", "1.5", ""])
async def test_a_bad_max_tasks_is_a_400(api: Client, value: str) -> None:
    response = await api.get(NEXT, params={"timeout": "0", "max_tasks": value}, headers=worker())
    error = await error_of(response, 400)
    assert error["code"] == "invalid_query"
    assert error["message"] == (
        f"query parameter max_tasks={value!r} must be a whole number from 1 to 100"
    )


# -- batch results ------------------------------------------------------------------------------


async def test_batch_results_are_applied_and_answered_in_order(api: Client) -> None:
    # Given three leased tasks
    await register(api, ["fetch_image"])
    for _ in range(3):
        await submit(api, "jobs/image_pipeline", IMAGE)
    tasks = await take_all(api, 3, max_tasks=3)
    # When their results come in one request
    answers = await post_results(api, [success(t) for t in tasks])
    # Then each is accepted, and each job moved on to its next step
    assert answers == [{"status": "accepted"}] * 3
    for task in tasks:
        view = await job(api, task["job_id"])
        assert view["state"] == "resize"
    # And sending the same batch again changes nothing (the SDK retries whole batches)
    again = await post_results(api, [success(t) for t in tasks])
    assert again == [{"status": "ignored", "reason": "duplicate"}] * 3


async def test_a_bad_item_sinks_no_other(api: Client) -> None:
    await register(api, ["fetch_image"])
    for _ in range(2):
        await submit(api, "jobs/image_pipeline", IMAGE)
    first, second = await take_all(api, 2, max_tasks=2)
    items = [
        success(first),
        {"task_id": first["task_id"], "data": {}},  # no job_id
        "not a result",
        {**success(second), "status": ""},
        {**success(second), "job_id": "f" * 32},  # a job nobody knows
        success(second),
    ]
    answers = await post_results(api, items)
    assert answers[0] == {"status": "accepted"}
    assert answers[1] == {
        "status": "ignored",
        "reason": "invalid_result",
        "message": "results[1]: 'job_id' is required: a non-empty string",
    }
    assert answers[2] == {
        "status": "ignored",
        "reason": "invalid_result",
        "message": "results[2]: a result must be an object, not a string",
    }
    assert answers[3]["reason"] == "invalid_result"
    assert answers[3]["message"].startswith("results[3]: 'status' must not be empty")
    assert answers[4] == {"status": "ignored", "reason": "job_not_found"}
    assert answers[5] == {"status": "accepted"}
    assert len(answers) == len(items)


async def test_results_of_another_workers_tasks_are_ignored(api: Client) -> None:
    await register(api, ["fetch_image"])
    await submit(api, "jobs/image_pipeline", IMAGE)
    [task] = await take_all(api, 1, max_tasks=1)
    other = worker("gpu-1", "gpu-token")
    answers = await post_results(api, [success(task)], headers=other)
    assert answers == [{"status": "ignored", "reason": "worker_mismatch"}]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({}, "'results' must be a list of 1 to 100 result objects, not null"),
        ({"results": []}, "'results' must be a list of 1 to 100 result objects, not 0 items"),
        ({"results": {}}, "'results' must be a list of 1 to 100 result objects, not an object"),
        (
            {"results": [{}] * 101},
            "'results' must be a list of 1 to 100 result objects, not 101 items",
        ),
    ],
)
async def test_a_malformed_batch_is_a_400(api: Client, body: Any, message: str) -> None:
    error = await error_of(await api.post(RESULTS, json=body, headers=worker()), 400)
    assert error["code"] == "invalid_field"
    assert error["message"] == message


@pytest.mark.parametrize(("data", "code"), [("[]", "invalid_body"), ("{", "invalid_json")])
async def test_a_batch_that_is_not_an_object_is_a_400(api: Client, data: str, code: str) -> None:
    headers = {**worker(), "Content-Type": "application/json"}
    response = await api.post(RESULTS, data=data, headers=headers)
    assert (await error_of(response, 400))["code"] == code


async def test_a_store_failure_on_one_item_is_a_503_for_the_batch(
    api: Client, orchestrator: Orchestrator, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = orchestrator.submit_result

    async def flaky(worker_id: str, body: dict[str, Any], check: Any = None) -> dict[str, Any]:
        if body["task_id"] == "t-down":
            raise StoreUnavailable("connection refused")
        return await real(worker_id, body, check)

    monkeypatch.setattr(orchestrator, "submit_result", flaky)
    items = [
        {"job_id": "f" * 32, "task_id": "t-up"},
        {"job_id": "f" * 32, "task_id": "t-down"},
    ]
    response = await api.post(RESULTS, json={"results": items}, headers=worker())
    assert (await error_of(response, 503))["code"] == "store_unavailable"


@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", f"{NEXT}?max_tasks=5&timeout=0"), ("POST", RESULTS)],
)
@pytest.mark.parametrize(
    "headers",
    [worker("w-solo", "gpu-token"), {"X-Worker-Token": "solo-token"}, {"X-Worker-ID": "w-solo"}],
)
async def test_the_batch_routes_refuse_unknown_workers(
    api: Client, method: str, path: str, headers: dict[str, str]
) -> None:
    body = {"results": [{"job_id": "j", "task_id": "t"}]}
    response = await api.request(method, path, json=body, headers=headers)
    error = await error_of(response, 403)
    assert error["code"] == "worker_unauthorized"
    assert error["message"].startswith("Unauthorized: ")


async def test_a_batch_poll_naming_another_worker_is_refused(api: Client) -> None:
    path = "/_worker/workers/gpu-1/tasks/next?max_tasks=2&timeout=0"
    error = await error_of(await api.get(path, headers=worker()), 403)
    assert error["message"] == (
        "Unauthorized: the path names worker 'gpu-1' but X-Worker-ID is 'w-solo'"
    )
