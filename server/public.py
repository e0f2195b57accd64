"""Public endpoints under `/_public`: no client token.

- `/_public/status`, for load balancers and probes.
- `/_public/approvals/{job_id}/{token}`, the single-use approval link a job waiting for a
  person shows its owner: the token (192 random bits, compared in constant time) is the
  only credential, and it dies with the first decision. A wrong token and an unknown job get
  the same 404, so neither part can be probed.
"""

from __future__ import annotations

import hmac
from typing import Any

from aiohttp import web

from engine.runtime.deployment import WIPED_MESSAGE
from engine.runtime.jobdoc import Ignored
from server.client_api import decision_of, refused_decision
from server.errors import NotFound, error_response, json_response
from server.params import ID
from server.routing import Area
from server.state import orchestrator, public_base
from server.views import approval_path, iso

#: The link is a secret: no cache may keep the answers, no page may pass it on as a referrer.
PRIVATE = {"Cache-Control": "no-store", "Referrer-Policy": "no-referrer"}


async def status(request: web.Request) -> web.Response:
    """200 while the store answers PING, 503 otherwise; a store found wiped while this
    process ran is reported (still 200: new jobs work, but the old ones are lost)."""
    orch = orchestrator(request)
    if not await orch.store_reachable():
        return error_response(503, "store_unavailable", "the job store does not answer")
    wiped_at = orch.store_wiped_at()
    if wiped_at is not None:
        return json_response(
            {
                "status": "store_wiped",
                "store": "reachable",
                "store_wiped_at": iso(wiped_at),
                "message": WIPED_MESSAGE,
            }
        )
    return json_response({"status": "ok", "store": "reachable"})


def approval_not_found() -> NotFound:
    return NotFound(
        "no approval is waiting at this link: it was used already, it has expired, or it "
        "was never valid",
        code="approval_not_found",
    )


def _link(request: web.Request) -> tuple[str, str]:
    job_id, token = request.match_info["job_id"], request.match_info["token"]
    if not ID.match(job_id) or not ID.match(token):
        raise approval_not_found()
    return job_id, token


async def describe_approval(request: web.Request) -> web.Response:
    """What a person who opens the link sees: the question, the choices, how to answer."""
    job_id, token = _link(request)
    job = await orchestrator(request).get_job(job_id, None)  # the token stands for the owner
    approval = job.get("approval") if job is not None else None
    if not isinstance(approval, dict) or not hmac.compare_digest(
        str(approval.get("token") or "").encode(), token.encode()
    ):
        raise approval_not_found()
    assert job is not None
    decisions = list(approval.get("decisions") or [])
    url = public_base(request) + approval_path(job_id, token)
    example = decisions[0] if decisions else "approve"
    body: dict[str, Any] = {
        "job_id": job_id,
        "blueprint": job.get("blueprint"),
        "state": approval.get("state"),
        "message": approval.get("message"),
        "decisions": decisions,
        "asked_at": iso(approval.get("asked_at")),
        "timeout_at": iso(approval.get("timeout_at")),
        "how_to_decide": {
            "method": "POST",
            "url": url,
            "body": {"decision": f"one of: {', '.join(decisions)}"},
            "example": (
                f"curl -X POST -H 'Content-Type: application/json' "
                f'-d \'{{"decision": "{example}"}}\' {url}'
            ),
            "note": "the link works once: the first decision ends the approval",
        },
    }
    response = json_response(body)
    response.headers.update(PRIVATE)
    return response


async def decide_by_link(request: web.Request) -> web.Response:
    """A decision through the approval link: the same answers as the owner's endpoint,
    except that a wrong token is the 404 of an unknown job."""
    job_id, token = _link(request)
    decision = await decision_of(request)
    orch = orchestrator(request)
    outcome = await orch.decide(job_id, None, decision, token=token)
    if outcome is None or (isinstance(outcome, Ignored) and outcome.reason == "invalid_token"):
        raise approval_not_found()
    if isinstance(outcome, Ignored):
        raise await refused_decision(orch, job_id, decision, outcome)
    # Only what the person needs: the job's data and result belong to its owner.
    response = json_response(
        {
            "status": "accepted",
            "job_id": job_id,
            "decision": decision,
            "job_status": outcome["status"],
            "state": outcome.get("state"),
        }
    )
    response.headers.update(PRIVATE)
    return response


def add_public_routes(app: web.Application) -> None:
    """The `/_public` routes on `app`'s router: no token."""
    area = Area(app, "/_public")
    area.get("/status", status)
    area.get("/approvals/{job_id}/{token}", describe_approval)
    area.post("/approvals/{job_id}/{token}", decide_by_link)
