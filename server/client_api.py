"""The client API under `/api/v1`: submit jobs, read them, cancel them, decide their
approvals, draw their path, read blueprints.

Every route needs `X-Client-Token`; a client sees only its own jobs. Another client's job,
an unknown id and a malformed id all get the same 404, so ids cannot be probed.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web

from engine.blueprint.dot import to_dot
from engine.blueprint.model import Blueprint, ParallelState, TaskSpec, TaskState
from engine.durations import parse_duration
from engine.runtime.jobdoc import TERMINAL, Ignored
from engine.runtime.jobgraph import job_dot
from engine.runtime.orchestrator import Orchestrator, parse_cursor
from server.auth import CLIENT_HEADER
from server.errors import ApiError, BadRequest, Conflict, Handler, NotFound, json_response
from server.params import (
    ID,
    json_object,
    json_type,
    query_int,
    query_number,
    reject_unknown,
    required_str,
)
from server.state import (
    CLIENT,
    CLIENT_AUTH,
    CLOSING,
    orchestrator,
    public_base,
    unless_closing,
)
from server.views import blueprint_detail, blueprint_summary, event_view, iso, job_view

PREFIX = "/api/v1"
SUBMIT_FIELDS = ("initial_data", "webhook_url", "dispatch_timeout", "result_timeout")
STATUSES = frozenset(
    {"pending", "queued", "running", "retrying", "waiting", "waiting_for_human", *TERMINAL}
)
MAX_WAIT_S = 60.0
MAX_LIMIT = 200
_NAME = re.compile(r"^[A-Za-z0-9_-]{1,128}$")


@web.middleware
async def client_auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    request[CLIENT] = request.config_dict[CLIENT_AUTH].client(request.headers.get(CLIENT_HEADER))
    try:
        return await handler(request)
    except web.HTTPMethodNotAllowed as exc:
        # The submission route takes a POST on any path, so aiohttp lists POST as allowed
        # on every path (GET /api/v1/jobs/x/graph -> "Allow: GET,HEAD,POST"). POST is
        # allowed only where a fixed route or a blueprint's api_endpoint takes it.
        if "POST" not in exc.allowed_methods or _takes_post(request):
            raise
        allowed = set(exc.allowed_methods) - {"POST"}
        raise web.HTTPMethodNotAllowed(request.method, allowed) from None


def _takes_post(request: web.Request) -> bool:
    endpoint = request.path.removeprefix(PREFIX + "/")
    return endpoint in orchestrator(request).registry.by_endpoint


async def _fixed_methods(request: web.Request) -> set[str]:
    """The methods the fixed routes (all but the submission route) take on this path."""
    methods: set[str] = set()
    for resource in request.app.router.resources():
        if any(route.handler is submit_job for route in resource):
            continue
        match, allowed = await resource.resolve(request)
        if match is not None:
            methods.add(request.method)
        methods |= allowed
    return methods


def job_not_found() -> NotFound:
    return NotFound("no job with this id is visible to this client", code="job_not_found")


def _job_id(request: web.Request) -> str:
    job_id = request.match_info["job_id"]
    if not ID.match(job_id):
        raise job_not_found()  # the same answer as for an unknown id
    return job_id


async def _read_view(request: web.Request, job_id: str, wait_s: float = 0.0) -> dict[str, Any]:
    """The owner's view of a job (with its approval link, if it waits for a person); with
    `wait_s`, once the job is terminal or the wait ends."""
    orch = orchestrator(request)
    read = orch.read(job_id, request[CLIENT], wait_s)
    record = await unless_closing(request, read, None) if wait_s > 0 else await read
    if record is None and wait_s > 0 and request.config_dict[CLOSING].is_set():
        record = await orch.read(job_id, request[CLIENT])  # shutting down: answer as it is
    if record is None:
        raise job_not_found()
    return job_view(
        record.doc,
        record.leases,
        await _retry_types(orch, record.doc),
        # Only a job waiting for a person shows a link (building the origin costs).
        public_base=public_base(request) if record.doc.get("approval") else None,
    )


async def _retry_types(
    orch: Orchestrator, doc: dict[str, Any]
) -> dict[tuple[str, int | None], str]:
    """The task type of each pending retry (a retry entry names only state and branch),
    from the blueprint version the job is pinned to."""
    retries = doc.get("retries") or []
    if not retries:
        return {}
    blueprint = (await orch.registry.machine(doc["hash"], orch.store)).bp
    types: dict[tuple[str, int | None], str] = {}
    for retry in retries:
        key = (retry["state"], retry.get("branch"))
        task_type = task_type_of(blueprint, *key)
        if task_type is not None:
            types[key] = task_type
    return types


def task_type_of(blueprint: Blueprint, state_name: str, branch: int | None) -> str | None:
    """The task type a task state, or one branch of a parallel state, dispatches."""
    state = blueprint.states.get(state_name)
    spec: TaskSpec | None = None
    if isinstance(state, TaskState):
        spec = state.spec
    elif isinstance(state, ParallelState):
        if state.item_spec is not None:
            spec = state.item_spec
        elif branch is not None and 0 <= branch < len(state.branches):
            spec = state.branches[branch][1]
    return spec.task_type if spec is not None else None


# -- jobs ---------------------------------------------------------------------------------


async def submit_job(request: web.Request) -> web.Response:
    orch = orchestrator(request)
    endpoint = request.match_info["api_endpoint"]
    blueprint = orch.registry.by_endpoint.get(endpoint)
    if blueprint is None:
        fixed = await _fixed_methods(request)
        if fixed:  # e.g. POST /api/v1/jobs: a path that exists, for other methods
            raise web.HTTPMethodNotAllowed(request.method, fixed)
        raise NotFound(
            f"no blueprint serves POST {PREFIX}/{endpoint}; GET {PREFIX}/blueprints lists "
            "each blueprint's api_endpoint",
            code="unknown_endpoint",
        )
    body = await json_object(request, empty_ok=True)
    reject_unknown(body, SUBMIT_FIELDS, "the job request")
    problems: list[dict[str, str]] = []
    initial_data = body.get("initial_data", {})
    if not isinstance(initial_data, dict):
        problems.append(
            _problem("initial_data", f"must be an object, not {json_type(initial_data)}")
        )
    webhook_url = _webhook_url(body.get("webhook_url"), problems)
    dispatch_ms = _timeout_ms(body, "dispatch_timeout", problems)
    result_ms = _timeout_ms(body, "result_timeout", problems)
    if problems:
        raise BadRequest(
            "; ".join(f"{p['path']}: {p['message']}" for p in problems),
            code="invalid_request",
            details=problems,
        )
    _check_input(blueprint, initial_data)
    job_id = await orch.submit(
        blueprint,
        initial_data,
        client=request[CLIENT],
        webhook_url=webhook_url,
        dispatch_timeout_ms=dispatch_ms,
        result_timeout_ms=result_ms,
    )
    response = json_response({"status": "accepted", "job_id": job_id}, status=202)
    response.headers["Location"] = f"{PREFIX}/jobs/{job_id}"
    return response


def _problem(field: str, message: str) -> dict[str, str]:
    return {"path": f"$.{field}", "message": message}


def _webhook_url(value: Any, problems: list[dict[str, str]]) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        problems.append(_problem("webhook_url", f"must be a string, not {json_type(value)}"))
        return None
    try:
        parts = urlsplit(value)
        host = parts.hostname
    except ValueError:
        host = None
        parts = None
    if parts is None or parts.scheme not in ("http", "https") or not host or len(value) > 2048:
        problems.append(
            _problem("webhook_url", f"{value[:200]!r} is not an http:// or https:// URL")
        )
        return None
    return value


def _timeout_ms(body: dict[str, Any], name: str, problems: list[dict[str, str]]) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    try:
        seconds = parse_duration(value)
    except ValueError as exc:
        problems.append(_problem(name, str(exc)))
        return None
    if seconds <= 0 or seconds > 366 * 86_400:
        problems.append(_problem(name, f"{value!r} must be more than 0 and at most 366d"))
        return None
    return max(1, round(seconds * 1000))


def _check_input(blueprint: Blueprint, initial_data: dict[str, Any]) -> None:
    """Every input_schema violation at once, each with its path inside initial_data."""
    validator = blueprint.input_validator
    if validator is None:
        return
    errors = sorted(
        (
            {"path": error.json_path, "message": error.message}
            for error in validator.iter_errors(initial_data)
        ),
        key=lambda e: (e["path"], e["message"]),
    )
    if errors:
        first = f"{errors[0]['path']}: {errors[0]['message']}"
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        raise BadRequest(
            f"initial_data does not match the input_schema of blueprint {blueprint.name!r}: "
            f"{first}{more}",
            code="invalid_input",
            details=errors,
        )


async def get_job(request: web.Request) -> web.Response:
    job_id = _job_id(request)
    wait_s = query_number(request, "wait", 0.0, 0.0, MAX_WAIT_S, clamp=False)
    # Answers as soon as the job is terminal (at once if unknown or another client's).
    return json_response(await _read_view(request, job_id, wait_s))


async def job_history(request: web.Request) -> web.Response:
    job_id = _job_id(request)
    events = await orchestrator(request).history(job_id, request[CLIENT])
    if events is None:
        raise job_not_found()
    return json_response({"job_id": job_id, "events": [event_view(e) for e in events]})


async def list_jobs(request: web.Request) -> web.Response:
    status = request.query.get("status") or None
    if status is not None and status not in STATUSES:
        raise BadRequest(
            f"query parameter status={status[:50]!r} is not a job status; use one of "
            f"{', '.join(sorted(STATUSES))}",
            code="invalid_query",
        )
    blueprint = request.query.get("blueprint") or None
    if blueprint is not None and not _NAME.match(blueprint):
        raise BadRequest(
            f"query parameter blueprint={blueprint[:50]!r} is not a blueprint name",
            code="invalid_query",
        )
    limit = query_int(request, "limit", 50, 1, MAX_LIMIT)
    cursor = request.query.get("cursor") or None
    if cursor is not None:
        try:
            parse_cursor(cursor)
        except ValueError:
            raise BadRequest(
                "query parameter cursor must be a next_cursor value from a previous page",
                code="invalid_query",
            ) from None
    jobs, next_cursor = await orchestrator(request).list_jobs(
        request[CLIENT], status=status, blueprint=blueprint, limit=limit, cursor=cursor
    )
    return json_response(
        {
            "jobs": [_list_item(doc) for doc in jobs],
            "next_cursor": next_cursor,
        }
    )


def _list_item(doc: dict[str, Any]) -> dict[str, Any]:
    """A job in a listing: status and times; the full view is one GET away."""
    view = job_view(doc)
    item = {k: view[k] for k in ("id", "blueprint", "version", "status", "state")}
    item.update(created_at=iso(doc["created_at"]), updated_at=iso(doc["updated_at"]))
    item["finished_at"] = view["finished_at"]
    if "error" in view:
        item["error"] = view["error"]
    return item


async def cancel_job(request: web.Request) -> web.Response:
    job_id = _job_id(request)
    outcome = await orchestrator(request).cancel(job_id, request[CLIENT])
    if outcome is None:
        raise job_not_found()
    if isinstance(outcome, Ignored):
        raise Conflict(f"the job cannot be cancelled: {outcome.reason}", code="job_not_cancellable")
    return json_response(job_view(outcome))


async def decide_approval(request: web.Request) -> web.Response:
    """The owner approves, rejects, ... a job waiting in an approval state."""
    job_id = _job_id(request)
    decision = await decision_of(request)
    orch = orchestrator(request)
    outcome = await orch.decide(job_id, request[CLIENT], decision)
    if outcome is None:
        raise job_not_found()
    if isinstance(outcome, Ignored):
        raise await refused_decision(orch, job_id, decision, outcome)
    return json_response(await _read_view(request, job_id))


async def decision_of(request: web.Request) -> str:
    """The `decision` of an approval request body: `{"decision": "approve"}`."""
    body = await json_object(request)
    reject_unknown(body, ("decision",), "the approval request")
    return required_str(body, "decision")


async def refused_decision(
    orch: Orchestrator, job_id: str, decision: str, ignored: Ignored
) -> ApiError:
    """The answer to a decision the engine ignored: 400 for a decision the approval does
    not offer (listing those it does), 409 when the job waits for no approval."""
    if ignored.reason == "unknown_decision":
        record = await orch.store.read_job(job_id)
        approval = record.doc.get("approval") if record is not None else None
        if isinstance(approval, dict):
            allowed = list(approval.get("decisions") or [])
            return BadRequest(
                f"{decision[:100]!r} is not a decision of this approval; use one of: "
                f"{', '.join(allowed)}",
                code="unknown_decision",
                details={"decision": decision[:100], "allowed": allowed},
            )
        # else decided by someone else meanwhile: the job no longer waits
    elif ignored.reason != "not_waiting_for_approval":
        return Conflict(f"the decision was not applied: {ignored.reason}", code=ignored.reason)
    return Conflict(
        "the job is not waiting for an approval (it was decided already, or never asked)",
        code="not_waiting_for_approval",
    )


async def job_graph(request: web.Request) -> web.Response:
    """The job's blueprint (the version it runs) as DOT, with its path drawn on it."""
    job_id = _job_id(request)
    orch = orchestrator(request)
    doc = await orch.get_job(job_id, request[CLIENT])
    if doc is None:
        raise job_not_found()
    events = await orch.store.history(job_id)
    blueprint = (await orch.registry.machine(doc["hash"], orch.store)).bp
    return web.Response(
        text=job_dot(blueprint, doc, events), content_type="text/vnd.graphviz", charset="utf-8"
    )


# -- blueprints ---------------------------------------------------------------------------


def _blueprint(request: web.Request) -> Blueprint:
    name = request.match_info["name"]
    blueprint = orchestrator(request).registry.current(name)
    if blueprint is None:
        raise NotFound(
            f"no blueprint named {name[:128]!r} is loaded; GET {PREFIX}/blueprints lists them",
            code="blueprint_not_found",
        )
    return blueprint


async def list_blueprints(request: web.Request) -> web.Response:
    registry = orchestrator(request).registry
    blueprints = [blueprint_summary(registry.by_name[name]) for name in sorted(registry.by_name)]
    return json_response({"blueprints": blueprints})


async def get_blueprint(request: web.Request) -> web.Response:
    return json_response(blueprint_detail(_blueprint(request)))


async def blueprint_graph(request: web.Request) -> web.Response:
    return web.Response(
        text=to_dot(_blueprint(request)), content_type="text/vnd.graphviz", charset="utf-8"
    )


async def explain_job(request: web.Request) -> web.Response:
    from server.explain import explain_job as handler  # it imports this module's helpers

    return await handler(request)


def client_app() -> web.Application:
    """The `/api/v1` sub-application. Fixed routes first: the job-submission route catches
    every other POST path, since an api_endpoint may contain `/`."""
    app = web.Application(middlewares=[client_auth_middleware])
    app.router.add_get("/blueprints", list_blueprints)
    app.router.add_get("/blueprints/{name}", get_blueprint)
    app.router.add_get("/blueprints/{name}/graph", blueprint_graph)
    app.router.add_get("/jobs", list_jobs)
    app.router.add_get("/jobs/{job_id}", get_job)
    app.router.add_get("/jobs/{job_id}/history", job_history)
    app.router.add_get("/jobs/{job_id}/graph", job_graph)
    app.router.add_get("/jobs/{job_id}/explain", explain_job)
    app.router.add_post("/jobs/{job_id}/cancel", cancel_job)
    app.router.add_post("/jobs/{job_id}/approval", decide_approval)
    app.router.add_post("/{api_endpoint:.+}", submit_job)
    return app
