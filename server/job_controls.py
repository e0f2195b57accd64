"""Client routes that act on a running (or ended) job besides cancel and approval: events
into a listen state (`POST /api/v1/jobs/{id}/events/{name}`), pause and resume, redrive
and rerun.

The engine decides (engine/runtime/controls.py); this module reads the request and turns
what the engine answered into the JSON error model: 404 for a job the client cannot see,
409 when the job's state does not allow the change, 400 for a payload that breaks its
schema.
"""

from __future__ import annotations

import re
from typing import Any

from aiohttp import web

from engine.clock import now_ms
from engine.runtime.controls import InvalidInput, InvalidPayload
from engine.runtime.events import listening
from engine.runtime.jobdoc import Ignored
from server.client_api import _job_id, job_not_found
from server.errors import BadRequest, Conflict, Handler, json_response
from server.params import json_object, json_type, reject_unknown, required_str
from server.routing import Area
from server.state import CLIENT, orchestrator
from server.views import job_view

EVENT_NAME = re.compile(r"^[a-z][a-z0-9_]{0,63}$")  # the blueprint schema's statusName


async def send_event(request: web.Request) -> web.Response:
    """The job's listen state waiting for `name` takes the body (a JSON object) as the
    event's payload; `steps.<state>` holds it from then on."""
    job_id = _job_id(request)
    name = request.match_info["name"]
    if not EVENT_NAME.match(name):
        raise BadRequest(
            f"{name[:80]!r} is not an event name: lowercase letters, digits and _, starting "
            "with a letter (at most 64 characters)",
            code="invalid_event_name",
        )
    payload = await json_object(request, empty_ok=True)
    orch = orchestrator(request)
    try:
        outcome = await orch.controls.send_event(job_id, request[CLIENT], name, payload)
    except InvalidPayload as exc:
        raise BadRequest(str(exc), code="invalid_payload", details=exc.problems) from None
    if outcome is None:
        raise job_not_found()
    if isinstance(outcome, Ignored):
        raise await _not_listening(request, job_id, name)
    return json_response(job_view(outcome))


async def _not_listening(request: web.Request, job_id: str, name: str) -> Conflict:
    doc = await orchestrator(request).get_job(job_id, request[CLIENT])
    book = listening(doc, now_ms()) if doc is not None else None
    waits_for = book["event"] if book is not None else None
    status = doc["status"] if doc is not None else None
    if waits_for is not None:
        where = f"it listens for {waits_for!r}"
    else:
        where = f"it is {status} at state {doc['state'] if doc else None!r}"
    details: dict[str, Any] = {"event": name, "listening_for": waits_for, "status": status}
    return Conflict(
        f"the job is not listening for event {name!r} ({where}); events are not kept for "
        "later: send it once the job waits in a listen state for it",
        code="not_listening",
        details=details,
    )


REFUSALS = {
    "already_paused": "the job is paused already",
    "not_paused": "the job is not paused",
    "job_finished": "the job has ended (finished)",
    "job_failed": "the job has ended (failed)",
    "job_cancelled": "the job has ended (cancelled)",
    "job_not_ended": "it has not ended; cancel it first, or wait for its end",
    "subflow_child": "it is a subflow child, whose parent has moved on; redrive the parent",
    "redrive_limit": "it has run again as often as allowed",
    "nothing_to_redrive": (
        "it ended in an `end: failed` state by its own flow, not after a state failed; "
        "rerun it from a named state (POST .../rerun)"
    ),
}
REDRIVE_FIELDS = ("initial_data_patch",)
RERUN_FIELDS = ("from_state", "initial_data_patch")


def _refused(action: str, ignored: Ignored) -> Conflict:
    reason = REFUSALS.get(ignored.reason, ignored.reason)
    return Conflict(f"the job cannot be {action}: {reason}", code=ignored.reason)


def _pause_control(action: str) -> Handler:
    """The handler of `POST /jobs/{job_id}/pause` (action "paused") or `/resume` ("resumed")."""

    async def handler(request: web.Request) -> web.Response:
        job_id = _job_id(request)
        controls = orchestrator(request).controls
        change = controls.pause if action == "paused" else controls.resume
        outcome = await change(job_id, request[CLIENT])
        if outcome is None:
            raise job_not_found()
        if isinstance(outcome, Ignored):
            raise _refused(action, outcome)
        return json_response(job_view(outcome))

    return handler


async def redrive_job(request: web.Request) -> web.Response:
    """Run a failed or cancelled job again from the state that failed."""
    body = await json_object(request, empty_ok=True)
    reject_unknown(body, REDRIVE_FIELDS, "the redrive request")
    return await _run_again(request, None, _patch(body), "redriven")


async def rerun_job(request: web.Request) -> web.Response:
    """Run an ended job again from the state the body names."""
    body = await json_object(request)
    reject_unknown(body, RERUN_FIELDS, "the rerun request")
    return await _run_again(request, required_str(body, "from_state"), _patch(body), "rerun")


def _patch(body: dict[str, Any]) -> dict[str, Any] | None:
    patch = body.get("initial_data_patch")
    if patch is not None and not isinstance(patch, dict):
        raise BadRequest(
            f"$.initial_data_patch must be an object (a JSON Merge Patch), not {json_type(patch)}",
            code="invalid_request",
            details=[{"path": "$.initial_data_patch", "message": "must be an object"}],
        )
    return patch


async def _run_again(
    request: web.Request, from_state: str | None, patch: dict[str, Any] | None, action: str
) -> web.Response:
    job_id = _job_id(request)
    orch = orchestrator(request)
    try:
        outcome = await orch.controls.redrive(
            job_id, request[CLIENT], from_state=from_state, patch=patch
        )
    except InvalidInput as exc:
        raise BadRequest(str(exc), code="invalid_input", details=exc.problems) from None
    if outcome is None:
        raise job_not_found()
    if isinstance(outcome, Ignored):
        if outcome.reason == "unknown_state":
            doc = await orch.get_job(job_id, request[CLIENT])
            states = list((await orch.pinned_blueprint(doc)).states) if doc else []
            raise BadRequest(
                f"the job's blueprint has no state {str(from_state)[:100]!r}; use one of: "
                f"{', '.join(states)}",
                code="unknown_state",
                details={"from_state": from_state, "states": states},
            )
        raise _refused(action, outcome)
    return json_response(job_view(outcome))


def add_routes(area: Area) -> list[web.AbstractResource]:
    """Register these routes in the `/api/v1` area (before the catch-all submission
    route); their resources."""
    return [
        area.post("/jobs/{job_id}/events/{name}", send_event),
        area.post("/jobs/{job_id}/pause", _pause_control("paused")),
        area.post("/jobs/{job_id}/resume", _pause_control("resumed")),
        area.post("/jobs/{job_id}/redrive", redrive_job),
        area.post("/jobs/{job_id}/rerun", rerun_job),
    ]
