"""Client routes that act on a running (or ended) job besides cancel and approval: events
into a listen state (`POST /api/v1/jobs/{id}/events/{name}`), pause and resume.

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
from engine.runtime.controls import InvalidPayload
from engine.runtime.events import listening
from engine.runtime.jobdoc import Ignored
from server.client_api import _job_id, job_not_found
from server.errors import BadRequest, Conflict, Handler, json_response
from server.params import json_object
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
}


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


def add_routes(app: web.Application) -> None:
    """Register these routes on the `/api/v1` sub-application (before the catch-all
    submission route)."""
    app.router.add_post("/jobs/{job_id}/events/{name}", send_event)
    app.router.add_post("/jobs/{job_id}/pause", _pause_control("paused"))
    app.router.add_post("/jobs/{job_id}/resume", _pause_control("resumed"))
