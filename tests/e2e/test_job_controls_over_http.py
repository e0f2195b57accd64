"""Job controls told through HTTP only: real `interlock serve` processes (two of them, on one
Redis or a Redis Cluster) and a real worker process.

Events into a listen state, sent to whichever server.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.e2e.test_flow_over_http import (
    Http,
    client,
    events,
    in_status,
    names,
    submit,
    terminal,
    until,
    view,
)
from tests.support.processes import serve, worker

pytestmark = pytest.mark.timeout(120)


async def post(http: Http, path: str, body: Any = None) -> tuple[int, dict[str, Any]]:
    async with http.post(path, json=body) as resp:
        return resp.status, await resp.json()


async def test_an_event_sent_to_another_server_moves_the_job_on(
    tmp_path: Path, any_redis_url: str
) -> None:
    """Given a payment job waiting in its listen state on two servers, when the provider's
    event arrives at the other server, then the job takes its payload and finishes; a bad
    payload and an event nobody waits for are refused and change nothing."""
    with (
        serve(tmp_path, any_redis_url) as one,
        serve(tmp_path, any_redis_url) as two,
        worker(tmp_path, one.url, "w-mail", "send_email"),
    ):
        async with client(one) as http_one, client(two) as http_two:
            job_id = await submit(http_one, "jobs/payment_callback", {"user": "ada", "amount": 5})
            waiting = await in_status(http_one, job_id, "waiting")
            assert waiting["listen"]["event"] == "payment_received"
            path = f"/api/v1/jobs/{job_id}/events/payment_received"

            status, body = await post(http_two, path, {"amount": 5, "reference": "nope"})
            assert (status, body["error"]["code"]) == (400, "invalid_payload")
            assert body["error"]["details"][0]["path"] == "$.reference"
            status, body = await post(http_two, f"/api/v1/jobs/{job_id}/events/refund", {})
            assert (status, body["error"]["code"]) == (409, "not_listening")

            status, body = await post(http_two, path, {"amount": 5, "reference": "PAY-0042"})
            assert status == 200, body
            assert body["state"] == "receipt"
            job = await terminal(http_one, job_id)
            assert (job["status"], job["result"]) == (
                "finished",
                {"reference": "PAY-0042", "amount": 5},
            )
            assert names(await events(http_one, job_id)).count("event_received") == 1
            status, body = await post(http_one, path, {"amount": 5, "reference": "PAY-0042"})
            assert (status, body["error"]["details"]["status"]) == (409, "finished")


async def test_a_paused_job_keeps_its_running_tasks_result_and_goes_on_when_resumed(
    tmp_path: Path, any_redis_url: str
) -> None:
    """Given a payment whose charge a worker is running, when the job is paused on one
    server, then the charge's result is kept but the receipt is not dispatched; when it is
    resumed on the other server, the receipt is sent and the job finishes."""
    with (
        serve(tmp_path, any_redis_url) as one,
        serve(tmp_path, any_redis_url) as two,
        worker(tmp_path, one.url, "w-pay", "charge_card,send_receipt", "--delay", "1"),
    ):
        async with client(one) as http_one, client(two) as http_two:
            job_id = await submit(http_one, "jobs/charge", {"card_token": "tok", "amount": 5})
            await in_status(http_one, job_id, "running")
            status, paused = await post(http_two, f"/api/v1/jobs/{job_id}/pause")
            assert (status, paused["status"]) == (200, "paused"), paused

            async def charged() -> bool:
                return "move_held" in names(await events(http_one, job_id))

            await until("the charge's result kept", charged)
            job = await view(http_one, job_id)
            assert (job["status"], job["state"]) == ("paused", "charge")
            assert job["paused"]["held"]["to"] == "receipt"
            assert "send_receipt" not in str(await events(http_one, job_id))

            status, resumed = await post(http_two, f"/api/v1/jobs/{job_id}/resume")
            assert (status, resumed["state"]) == (200, "receipt"), resumed
            job = await terminal(http_one, job_id)
            assert (job["status"], job["result"]) == ("finished", {"charge_id": "ch_1"})


async def test_a_failed_job_redriven_on_another_server_finishes_keeping_its_history(
    tmp_path: Path, any_redis_url: str
) -> None:
    """Given a payment that failed because the gateway declined its first charge, when it
    is redriven through the other server with a new amount, then the charge runs again (only
    it) with the new amount and the job finishes; its history keeps the failure."""
    with (
        serve(tmp_path, any_redis_url) as one,
        serve(tmp_path, any_redis_url) as two,
        worker(
            tmp_path,
            one.url,
            "w-pay",
            "charge_card,send_receipt",
            "--fail-first",
            "1",
            "--fail-code",
            "PERMANENT_ERROR",
        ),
    ):
        async with client(one) as http_one, client(two) as http_two:
            job_id = await submit(http_one, "jobs/charge", {"card_token": "tok", "amount": 5})
            job = await terminal(http_one, job_id)
            assert (job["status"], job["error"]["code"]) == ("failed", "GATEWAY_UNAVAILABLE")

            patch = {"initial_data_patch": {"amount": 6}}
            status, body = await post(http_two, f"/api/v1/jobs/{job_id}/redrive", patch)
            assert (status, body["state"]) == (200, "charge"), body
            job = await terminal(http_one, job_id)
            assert (job["status"], job["result"]) == ("finished", {"charge_id": "ch_1"})
            history = await events(http_two, job_id)
            assert names(history).count("job_failed") == 1
            [redriven] = [e for e in history if e["event"] == "job_redriven"]
            assert (redriven["state"], redriven["previous_error"]) == (
                "charge",
                "GATEWAY_UNAVAILABLE",
            )
            charges = [e for e in history if e["event"] == "task_queued" and e["state"] == "charge"]
            assert len(charges) == 2

            status, body = await post(http_two, f"/api/v1/jobs/{job_id}/redrive")
            assert (status, body["error"]["code"]) == (409, "job_finished")
