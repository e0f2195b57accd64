"""`GET /api/v1/jobs/{id}/explain` and `interlock explain`: why a job is where it is."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

from tests.server.helpers import ACME, GLOBEX, Client, error_of, ok_json, poll, register, result
from tests.server.helpers import submit as submit_job
from tests.support.processes import CLIENT_TOKEN, ROOT, serve

IMAGE = {"url": "https://example.com/cat.png"}


async def explain(api: Client, job_id: str) -> dict[str, Any]:
    body: dict[str, Any] = await ok_json(
        await api.get(f"/api/v1/jobs/{job_id}/explain", headers=ACME)
    )
    assert body["job_id"] == job_id
    return body


async def test_a_queued_job_names_its_task_type_and_the_workers_serving_it(api: Client) -> None:
    # Given a job whose first task no worker serves
    job_id = await submit_job(api, "jobs/image_pipeline", IMAGE)

    # Then it is queued at fetch with no worker connected for fetch_image
    body = await explain(api, job_id)
    assert body["status"] == "queued"
    assert body["sentence"].startswith("queued ")
    assert "at state `fetch`: 0 workers connected for task type `fetch_image`" in body["sentence"]
    assert "(never seen)" in body["sentence"]
    [task] = body["facts"]["tasks"]
    assert task["task_type"] == "fetch_image"
    assert task["workers_connected"] == 0

    # When a worker for it registers, the count follows
    await register(api, ["fetch_image"])
    task = (await explain(api, job_id))["facts"]["tasks"][0]
    assert task["workers_connected"] == 1


async def test_a_running_job_names_its_worker_and_its_run_timeout(api: Client) -> None:
    await register(api, ["fetch_image"])
    job_id = await submit_job(api, "jobs/image_pipeline", IMAGE)
    assert (await poll(api, ["fetch_image"]))["job_id"] == job_id

    body = await explain(api, job_id)
    assert body["status"] == "running"
    assert body["sentence"].startswith("running `fetch` on worker w-solo for ")
    assert "last heartbeat" in body["sentence"]
    assert "run timeout in " in body["sentence"]
    [task] = body["facts"]["tasks"]
    assert task["worker_id"] == "w-solo"
    assert 0 < task["run_timeout_in_ms"] <= 3_600_000


async def test_a_retrying_job_gives_the_attempt_and_the_error(api: Client) -> None:
    await register(api, ["charge_card"])
    job_id = await submit_job(api, "jobs/charge", {"card_token": "t", "amount": 5})
    task = await poll(api, ["charge_card"])
    error = {"code": "TRANSIENT_ERROR", "message": "gateway unreachable"}
    body = {"job_id": job_id, "task_id": task["task_id"], "status": "failure", "error": error}
    assert await result(api, body) == {"status": "accepted"}

    answer = await explain(api, job_id)
    assert answer["status"] == "retrying"
    sentence = answer["sentence"]
    assert sentence.startswith(
        "retrying `charge` attempt 2 of 5 after TRANSIENT_ERROR 'gateway unreachable', "
        "next attempt in "
    ), sentence
    [facts] = answer["facts"]["tasks"]
    assert facts["last_error"] == error
    assert facts["max_attempts"] == 5


async def test_approvals_and_ended_jobs_are_explained(api: Client) -> None:
    job_id = await submit_job(api, "jobs/expense_approval", {"amount": 10, "employee": "ann"})
    body = await explain(api, job_id)
    assert body["sentence"].startswith("waiting for approval at state `review` since ")
    assert "decisions: approve, reject" in body["sentence"]
    assert body["facts"]["timeout_in_ms"] > 0
    assert "link" not in json.dumps(body["facts"])  # the link is for the job's view only

    decided = await api.post(
        f"/api/v1/jobs/{job_id}/approval", json={"decision": "reject"}, headers=ACME
    )
    assert decided.status == 200
    body = await explain(api, job_id)
    assert body["status"] == "failed"
    assert body["sentence"].startswith("failed at state `rejected` at ")


async def test_another_clients_job_is_not_found(api: Client) -> None:
    job_id = await submit_job(api, "jobs/image_pipeline", IMAGE)
    response = await api.get(f"/api/v1/jobs/{job_id}/explain", headers=GLOBEX)
    assert (await error_of(response, 404))["code"] == "job_not_found"


def test_the_cli_prints_the_sentence_from_a_live_server(tmp_path: Path) -> None:
    with serve(tmp_path, "memory://") as server:
        request = urllib.request.Request(
            f"{server.url}/api/v1/jobs/image_pipeline",
            data=json.dumps({"initial_data": IMAGE}).encode(),
            headers={"X-Client-Token": CLIENT_TOKEN, "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            job_id = json.loads(response.read())["job_id"]
        base = [sys.executable, "-m", "interlock_cli", "explain", "--url", server.url]
        known = subprocess.run(
            [*base, "--token", CLIENT_TOKEN, job_id],
            capture_output=True,
            text=True,
            timeout=30,
            cwd=ROOT,
        )
        refused = subprocess.run(
            [*base, "--token", "wrong", job_id], capture_output=True, text=True, timeout=30
        )
    assert known.returncode == 0, known.stderr
    assert known.stdout.startswith(f"{job_id}: queued ")
    assert "task type `fetch_image`" in known.stdout
    assert refused.returncode == 1
    assert "X-Client-Token is not valid" in refused.stderr
