"""Events into a running job through HTTP, on the embedded store: the answers clients get."""

from __future__ import annotations

from typing import Any

import pytest

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

PAYMENT = {"user": "ada", "amount": 12.5}
PAID = {"amount": 12.5, "reference": "PAY-1234"}


async def send(
    api: Client, job_id: str, name: str, payload: Any = None, headers: dict[str, str] = ACME
) -> Any:
    return await api.post(f"/api/v1/jobs/{job_id}/events/{name}", json=payload, headers=headers)


async def listening_job(api: Client) -> str:
    job_id = await submit(api, "jobs/payment_callback", PAYMENT)
    view = await job(api, job_id)
    assert (view["status"], view["state"]) == ("waiting", "paid")
    assert view["listen"]["event"] == "payment_received"
    assert view["listen"]["timeout_at"] is not None
    return job_id


async def test_an_event_moves_the_job_on_with_its_payload(api: Client) -> None:
    job_id = await listening_job(api)
    view = await ok_json(await send(api, job_id, "payment_received", PAID))
    assert (view["status"], view["state"]) == ("queued", "receipt")
    assert "listen" not in view
    events = await ok_json(await api.get(f"/api/v1/jobs/{job_id}/history", headers=ACME))
    received = [e for e in events["events"] if e["event"] == "event_received"]
    assert [(e["state"], e["name"]) for e in received] == [("paid", "payment_received")]
    error = await error_of(await send(api, job_id, "payment_received", PAID), 409)
    assert error["code"] == "not_listening"  # taken once


@pytest.mark.parametrize(
    ("payload", "paths"),
    [
        ({"amount": "12"}, ["$", "$.amount"]),  # reference missing, amount a string
        ({"amount": 1, "reference": "PAY-12"}, ["$.reference"]),  # breaks the RE2 pattern
        ({}, ["$"]),
    ],
)
async def test_a_payload_that_breaks_the_schema_is_a_400_and_the_job_keeps_waiting(
    api: Client, payload: dict[str, Any], paths: list[str]
) -> None:
    job_id = await listening_job(api)
    error = await error_of(await send(api, job_id, "payment_received", payload), 400)
    assert error["code"] == "invalid_payload"
    assert sorted({p["path"] for p in error["details"]}) == paths
    assert (await job(api, job_id))["state"] == "paid"


async def test_refusals_say_what_is_wrong(api: Client) -> None:
    job_id = await listening_job(api)
    error = await error_of(await send(api, job_id, "payment_failed", {}), 409)
    assert error["code"] == "not_listening"
    assert error["details"]["listening_for"] == "payment_received"
    other = await error_of(await send(api, job_id, "payment_received", PAID, GLOBEX), 404)
    assert other["code"] == "job_not_found"  # another client's job: as if unknown
    unknown = await error_of(await send(api, "0" * 32, "payment_received", PAID), 404)
    assert unknown["code"] == "job_not_found"
    bad_name = await error_of(await send(api, job_id, "Not-A-Name", PAID), 400)
    assert bad_name["code"] == "invalid_event_name"
    not_object = await error_of(await send(api, job_id, "payment_received", [1]), 400)
    assert not_object["code"] == "invalid_body"
    assert (await job(api, job_id))["state"] == "paid"


async def test_an_event_before_the_job_listens_is_refused(api: Client) -> None:
    job_id = await submit(api, "jobs/reminder", {"user": "ada"})
    error = await error_of(await send(api, job_id, "payment_received", PAID), 409)
    assert error["details"] == {
        "event": "payment_received",
        "listening_for": None,
        "status": "waiting",
    }


async def test_explain_says_what_the_job_listens_for(api: Client) -> None:
    job_id = await listening_job(api)
    body = await ok_json(await api.get(f"/api/v1/jobs/{job_id}/explain", headers=ACME))
    assert "for event `payment_received`" in body["sentence"]
    assert f"/api/v1/jobs/{job_id}/events/payment_received" in body["sentence"]


# -- pause and resume -------------------------------------------------------------------------


async def control(api: Client, job_id: str, action: str, headers: dict[str, str] = ACME) -> Any:
    return await api.post(f"/api/v1/jobs/{job_id}/{action}", headers=headers)


async def test_a_paused_job_shows_paused_holds_its_task_and_resumes(api: Client) -> None:
    job_id = await submit(api, "jobs/image_pipeline", {"url": "https://example.com/a.png"})
    paused = await ok_json(await control(api, job_id, "pause"))
    assert (paused["status"], paused["state"]) == ("paused", "fetch")
    assert paused["paused"]["by"] == "client:acme"
    await register(api, ["fetch_image"])
    assert await poll(api, ["fetch_image"], wait=0.2) is None  # nothing is dispatched
    listing = await ok_json(await api.get("/api/v1/jobs?status=paused", headers=ACME))
    assert [j["id"] for j in listing["jobs"]] == [job_id]
    assert [j["status"] for j in listing["jobs"]] == ["paused"]
    explained = await ok_json(await api.get(f"/api/v1/jobs/{job_id}/explain", headers=ACME))
    assert explained["sentence"].startswith("paused at state `fetch` by client:acme")

    again = await error_of(await control(api, job_id, "pause"), 409)
    assert again["code"] == "already_paused"
    resumed = await ok_json(await control(api, job_id, "resume"))
    assert resumed["status"] == "queued"
    task = await poll(api, ["fetch_image"])
    assert task["job_id"] == job_id
    assert (await error_of(await control(api, job_id, "resume"), 409))["code"] == "not_paused"
    history = await ok_json(await api.get(f"/api/v1/jobs/{job_id}/history", headers=ACME))
    names = [e["event"] for e in history["events"]]
    assert names.index("job_paused") < names.index("job_resumed")


async def test_pause_refusals_and_cancel_of_a_paused_job(api: Client) -> None:
    job_id = await submit(api, "jobs/image_pipeline", {"url": "https://example.com/a.png"})
    other = await error_of(await control(api, job_id, "pause", GLOBEX), 404)
    assert other["code"] == "job_not_found"
    await ok_json(await control(api, job_id, "pause"))
    cancelled = await ok_json(await api.post(f"/api/v1/jobs/{job_id}/cancel", headers=ACME))
    assert cancelled["status"] == "cancelled"
    ended = await error_of(await control(api, job_id, "pause"), 409)
    assert (ended["code"], ended["message"]) == (
        "job_cancelled",
        "the job cannot be paused: the job has ended (cancelled)",
    )
    assert (await error_of(await control(api, job_id, "resume"), 409))["code"] == "job_cancelled"


# -- redrive and rerun -----------------------------------------------------------------------

CHARGE = {"card_token": "tok", "amount": 5}


async def answer(api: Client, skill: str, **reply: Any) -> dict[str, Any]:
    """A worker takes the next `skill` task and answers it with `reply`."""
    await register(api, [skill])
    task = await poll(api, [skill])
    assert task is not None, f"no {skill} task"
    body = {"job_id": task["job_id"], "task_id": task["task_id"], **reply}
    assert (await result(api, body))["status"] == "accepted"
    return dict(task)


async def failed_charge(api: Client) -> str:
    job_id = await submit(api, "jobs/charge", CHARGE)
    await answer(api, "charge_card", status="failure", error={"code": "PERMANENT_ERROR"})
    view = await job(api, job_id)
    assert (view["status"], view["state"]) == ("failed", "gateway_down")
    return job_id


async def test_a_failed_job_is_redriven_from_the_state_that_failed(api: Client) -> None:
    job_id = await failed_charge(api)
    body = {"initial_data_patch": {"amount": 7}}
    redriven = await ok_json(
        await api.post(f"/api/v1/jobs/{job_id}/redrive", json=body, headers=ACME)
    )
    assert (redriven["status"], redriven["state"]) == ("queued", "charge")
    task = await answer(api, "charge_card", data={"charge_id": "ch_9"})
    assert task["params"] == {"token": "tok", "amount": 7}
    await answer(api, "send_receipt", data={})
    view = await job(api, job_id, include="initial_data")
    assert (view["status"], view["result"]) == ("finished", {"charge_id": "ch_9"})
    assert view["initial_data"] == {"card_token": "tok", "amount": 7}
    history = await ok_json(await api.get(f"/api/v1/jobs/{job_id}/history", headers=ACME))
    names = [e["event"] for e in history["events"]]
    assert names.count("job_failed") == names.count("job_redriven") == 1
    assert names.index("job_failed") < names.index("job_redriven") < names.index("job_finished")

    # A finished job is rerun from a named state, not redriven
    again = await error_of(await api.post(f"/api/v1/jobs/{job_id}/redrive", headers=ACME), 409)
    assert again["code"] == "job_finished"
    rerun = await api.post(
        f"/api/v1/jobs/{job_id}/rerun", json={"from_state": "receipt"}, headers=ACME
    )
    assert (await ok_json(rerun))["state"] == "receipt"


async def test_redrive_refusals_say_what_is_wrong(api: Client) -> None:
    job_id = await failed_charge(api)
    url = f"/api/v1/jobs/{job_id}"
    bad = {"initial_data_patch": {"amount": None}}  # removes a required field
    error = await error_of(await api.post(f"{url}/redrive", json=bad, headers=ACME), 400)
    assert error["code"] == "invalid_input"
    assert error["details"] == [{"path": "$", "message": "'amount' is a required property"}]
    not_object = {"initial_data_patch": [1]}
    error = await error_of(await api.post(f"{url}/redrive", json=not_object, headers=ACME), 400)
    assert error["code"] == "invalid_request"
    error = await error_of(
        await api.post(f"{url}/rerun", json={"from_state": "chrage"}, headers=ACME), 400
    )
    assert (error["code"], error["details"]["from_state"]) == ("unknown_state", "chrage")
    assert "charge" in error["details"]["states"]
    error = await error_of(await api.post(f"{url}/rerun", json={}, headers=ACME), 400)
    assert error["code"] == "invalid_field"
    other = await error_of(await api.post(f"{url}/redrive", headers=GLOBEX), 404)
    assert other["code"] == "job_not_found"
    assert (await job(api, job_id))["status"] == "failed"  # nothing changed

    running = await submit(api, "jobs/charge", CHARGE)
    error = await error_of(await api.post(f"/api/v1/jobs/{running}/redrive", headers=ACME), 409)
    assert error["code"] == "job_not_ended"
