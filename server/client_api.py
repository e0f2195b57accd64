"""The client API under `/api/v1`: submit jobs, read them, cancel them, decide their
approvals, draw their path, read blueprints.

Every route needs `X-Client-Token`; a client sees only its own jobs. Another client's job,
an unknown id and a malformed id all get the same 404, so ids cannot be probed.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from aiohttp import web

from engine.blueprint.dot import to_dot
from engine.blueprint.model import Blueprint
from engine.durations import parse_duration
from engine.runtime.concurrency import ConcurrencyKeyError
from engine.runtime.jobdoc import Ignored, JobStatus
from engine.runtime.jobgraph import job_dot
from engine.runtime.orchestrator import Orchestrator, parse_cursor
from engine.runtime.webhooks import redact
from server import idempotency
from server.auth import CLIENT_HEADER
from server.errors import (
    ApiError,
    BadRequest,
    Conflict,
    Handler,
    NotFound,
    ServiceUnavailable,
    json_response,
)
from server.labels import parse_labels, query_labels
from server.live import job_when_changed, page_when_changed, since_of
from server.params import (
    ID,
    json_object,
    json_type,
    query_int,
    query_number,
    reject_unknown,
    required_str,
)
from server.routing import Area
from server.state import (
    CLIENT,
    CLIENT_AUTH,
    CLOSING,
    OFFLOAD,
    orchestrator,
    public_base,
    settings,
    unless_closing,
)
from server.views import blueprint_detail, blueprint_summary, event_view, iso, job_view
from server.webhook_policy import WebhookRefused
from server.workers_view import list_workers

PREFIX = "/api/v1"
SUBMIT_FIELDS = (
    "initial_data",
    "webhook_url",
    "dispatch_timeout",
    "result_timeout",
    "job_id",
    "labels",
)
STATUSES = frozenset(JobStatus)
MAX_WAIT_S = 60.0
MAX_LIMIT = 200
_NAME = re.compile(r"^[A-Za-z0-9_-]{1,128}$")


def _authenticate(request: web.Request) -> None:
    request[CLIENT] = request.app[CLIENT_AUTH].client(request.headers.get(CLIENT_HEADER))


def _without_post(request: web.Request, exc: web.HTTPMethodNotAllowed) -> web.HTTPMethodNotAllowed:
    """The submission route takes a POST on any path, so aiohttp lists POST as allowed on
    every path (GET /api/v1/jobs/x/graph -> "Allow: GET,HEAD,POST"). POST is allowed only
    where a fixed route or a blueprint's api_endpoint takes it."""
    if "POST" not in exc.allowed_methods or _takes_post(request):
        return exc
    return web.HTTPMethodNotAllowed(request.method, set(exc.allowed_methods) - {"POST"})


def client_route(handler: Handler) -> Handler:
    """`handler` behind the client's token, taking bare chosen job ids (`_bare_job_id`)."""

    async def route(request: web.Request) -> web.StreamResponse:
        _authenticate(request)
        try:
            try:
                return await handler(request)
            except NotFound as exc:
                if not _bare_job_id(request, exc):
                    raise
                return await handler(request)
        except web.HTTPMethodNotAllowed as exc:
            fixed = _without_post(request, exc)
            if fixed is exc:
                raise
            raise fixed from None

    return route


def unmatched_client(request: web.Request, exc: web.HTTPException) -> web.HTTPException:
    """A path under /api/v1 that no route takes: 401 without a client token, else its
    404, or its 405 (`_without_post`)."""
    _authenticate(request)
    if isinstance(exc, web.HTTPMethodNotAllowed):
        return _without_post(request, exc)
    return exc


def _takes_post(request: web.Request) -> bool:
    endpoint = request.path.removeprefix(PREFIX + "/")
    return orchestrator(request).blueprint_for_endpoint(endpoint) is not None


# The fixed client routes' resources (all but the submission route), on the root app.
FIXED_RESOURCES: web.AppKey[list[web.AbstractResource]] = web.AppKey("client_fixed_resources")


async def _fixed_methods(request: web.Request) -> set[str]:
    """The methods the fixed routes (all but the submission route) take on this path."""
    methods: set[str] = set()
    for resource in request.app[FIXED_RESOURCES]:
        match, allowed = await resource.resolve(request)
        if match is not None:
            methods.add(request.method)
        methods |= allowed
    return methods


def job_not_found() -> NotFound:
    return NotFound("no job with this id is visible to this client", code="job_not_found")


# The job id an owner route acts on, when it is not the one in the path (see below).
RESOLVED_JOB_ID = web.RequestKey("resolved_job_id", str)


def _job_id(request: web.Request) -> str:
    if RESOLVED_JOB_ID in request:
        return request[RESOLVED_JOB_ID]
    job_id = request.match_info["job_id"]
    if not ID.match(job_id):
        raise job_not_found()  # the same answer as for an unknown id
    return job_id


def _bare_job_id(request: web.Request, exc: NotFound) -> bool:
    """Owner routes (`/jobs/{job_id}...`) take the bare `job_id` a client chose at submit
    as well as the stored `<job_id>-<client tag>`: when no job of the client has the id in
    the path and it can be a chosen id, the route runs again on the client's tagged id
    (returns True: run it again). The tag is the requesting client's own, so no other
    client's job can answer; a full id costs nothing more, and a route finds nothing to
    change before it finds the job."""
    given = request.match_info.get("job_id")
    if (
        exc.code != "job_not_found"
        or given is None
        or RESOLVED_JOB_ID in request
        or idempotency.chosen_id_problem(given) is not None
    ):
        return False
    request[RESOLVED_JOB_ID] = idempotency.by_chosen_id(request[CLIENT], given).job_id
    return True


async def _read_view(
    request: web.Request, job_id: str, wait_s: float = 0.0, *, include_input: bool = False
) -> dict[str, Any]:
    """The owner's view of a job (with its approval link, if it waits for a person); with
    `wait_s`, once the job is terminal or the wait ends."""
    orch = orchestrator(request)
    read = orch.read(job_id, request[CLIENT], wait_s)
    record = await unless_closing(request, read, None) if wait_s > 0 else await read
    if record is None and wait_s > 0 and request.app[CLOSING].is_set():
        record = await orch.read(job_id, request[CLIENT])  # shutting down: answer as it is
    if record is None:
        raise job_not_found()
    view = await _view(request, orch, record.doc, record.leases)
    if include_input:
        view["initial_data"] = record.doc.get("initial_data")
    return view


async def _view(
    request: web.Request, orch: Orchestrator, doc: Mapping[str, Any], leases: dict[str, str]
) -> dict[str, Any]:
    return job_view(
        doc,
        leases,
        await _retry_types(orch, doc),
        # Only a job waiting for a person shows a link (building the origin costs).
        public_base=public_base(request) if doc.get("approval") else None,
    )


async def _retry_types(
    orch: Orchestrator, doc: Mapping[str, Any]
) -> dict[tuple[str, int | None], str]:
    """The task type of each pending retry (a retry entry names only state and branch),
    from the blueprint version the job is pinned to."""
    retries = doc.get("retries") or []
    if not retries:
        return {}
    blueprint = await orch.pinned_blueprint(doc)
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
    spec = state.task_spec(branch) if state is not None else None
    return spec.task_type if spec is not None else None


# -- jobs ---------------------------------------------------------------------------------


async def submit_job(request: web.Request) -> web.Response:
    orch = orchestrator(request)
    endpoint = request.match_info["api_endpoint"]
    blueprint = orch.blueprint_for_endpoint(endpoint)
    if blueprint is None:
        fixed = await _fixed_methods(request)
        if fixed:  # e.g. POST /api/v1/jobs: a path that exists, for other methods
            raise web.HTTPMethodNotAllowed(request.method, fixed)
        raise NotFound(
            f"no blueprint serves POST {PREFIX}/{endpoint}; GET {PREFIX}/blueprints lists "
            "each blueprint's api_endpoint",
            code="unknown_endpoint",
        )
    key = idempotency.idempotency_key(request.headers)
    body = await json_object(request, empty_ok=True)
    reject_unknown(body, SUBMIT_FIELDS, "the job request")
    problems: list[dict[str, str]] = []
    initial_data = body.get("initial_data", {})
    if not isinstance(initial_data, dict):
        problems.append(
            _problem("initial_data", f"must be an object, not {json_type(initial_data)}")
        )
    webhook_url = _webhook_url(request, body.get("webhook_url"), problems)
    dispatch_ms = _timeout_ms(body, "dispatch_timeout", problems)
    result_ms = _timeout_ms(body, "result_timeout", problems)
    chosen = _chosen_id(body.get(idempotency.FIELD), key, problems)
    labels = parse_labels(body.get("labels"), problems)
    if problems:
        raise BadRequest(
            "; ".join(f"{p['path']}: {p['message']}" for p in problems),
            code="invalid_request",
            details=problems,
        )
    # A large body is checked on a thread (server/offload.py); aiohttp keeps the body read.
    size = len(await request.read())
    await request.app[OFFLOAD].run(size, lambda: _check_input(blueprint, initial_data))
    options: dict[str, Any] = {
        "webhook_url": webhook_url,
        "dispatch_timeout_ms": dispatch_ms,
        "result_timeout_ms": result_ms,
        "labels": labels,
    }
    client = request[CLIENT]
    status = 202
    once: idempotency.Once | None = None
    if chosen is not None:
        once = idempotency.by_chosen_id(client, chosen)
    elif key is not None:
        once = idempotency.by_key(client, key)
    try:
        if once is None:
            job_id = await orch.submit(blueprint, initial_data, client=client, **options)
        else:
            job_id, status = await _submit_once(
                request, once, blueprint, initial_data, body, options
            )
    except ConcurrencyKeyError as exc:  # nothing was created
        raise BadRequest(str(exc), code="invalid_concurrency_key") from None
    response = json_response({"status": "accepted", "job_id": job_id}, status=status)
    response.headers["Location"] = f"{PREFIX}/jobs/{job_id}"
    return response


async def _submit_once(
    request: web.Request,
    once: idempotency.Once,
    blueprint: Blueprint,
    initial_data: dict[str, Any],
    body: dict[str, Any],
    options: dict[str, Any],
) -> tuple[str, int]:
    """Submit with an Idempotency-Key or a job_id: (job id, 202) for a new job, (its id,
    200) when the same request made it before; 409 when it was used for another request."""
    orch = orchestrator(request)
    client = request[CLIENT]
    job_id = once.job_id
    expected = idempotency.fingerprint(request.match_info["api_endpoint"], body)
    for _ in range(3):  # the job may expire between the two steps; then create it again
        if await orch.create(
            job_id, blueprint, initial_data, client=client, fingerprint=expected, **options
        ):
            return job_id, 202
        record = await orch.read(job_id, client)
        if record is not None:
            idempotency.check_replay(record.doc, once, expected)
            return job_id, 200
    raise ServiceUnavailable(f"the job of this {once.what} keeps changing; retry")


def _chosen_id(value: Any, key: str | None, problems: list[dict[str, str]]) -> str | None:
    """The client-chosen job id, when one is given and usable."""
    if value is None:
        return None
    problem = idempotency.chosen_id_problem(value)
    if problem is None and key is not None:
        problem = f"send either job_id or the {idempotency.HEADER} header, not both"
    if problem is not None:
        problems.append(_problem(idempotency.FIELD, problem))
        return None
    return str(value)


def _problem(field: str, message: str) -> dict[str, str]:
    return {"path": f"$.{field}", "message": message}


def _webhook_url(request: web.Request, value: Any, problems: list[dict[str, str]]) -> str | None:
    """A well-formed http(s) URL whose destination the webhook policy allows."""
    if value is None:
        return None
    if not isinstance(value, str):
        problems.append(_problem("webhook_url", f"must be a string, not {json_type(value)}"))
        return None
    try:
        return settings(request).webhook_policy.check_url(value)
    except WebhookRefused as exc:
        problems.append(_problem("webhook_url", f"{redact(value)} {exc}"))
        return None


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
    include = _include(request)
    # Answers as soon as the job is terminal (at once if unknown or another client's).
    view = await _read_view(request, job_id, wait_s, include_input=include)
    return json_response(view)


def _include(request: web.Request) -> bool:
    """`?include=initial_data` adds the job's input to its view (the web console shows it;
    other clients need not carry it on every read)."""
    include = request.query.get("include") or None
    if include is not None and include != "initial_data":
        raise BadRequest(
            f"query parameter include={include[:50]!r} is not supported; use include=initial_data",
            code="invalid_query",
        )
    return include is not None


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
    labels = query_labels(request)
    cursor = request.query.get("cursor") or None
    if cursor is not None:
        try:
            parse_cursor(cursor)
        except ValueError:
            raise BadRequest(
                "query parameter cursor must be a next_cursor value from a previous page",
                code="invalid_query",
            ) from None

    async def page() -> dict[str, Any]:
        jobs, next_cursor = await orchestrator(request).list_jobs(
            request[CLIENT],
            status=status,
            blueprint=blueprint,
            limit=limit,
            cursor=cursor,
            labels=labels,
        )
        return {"jobs": [_list_item(doc) for doc in jobs], "next_cursor": next_cursor}

    if "wait" not in request.query:
        return json_response(await page())
    # A long poll (see server/live.py): the page once it differs from the one seen.
    wait_s = query_number(request, "wait", 0.0, 0.0, MAX_WAIT_S, clamp=False)
    return json_response(await page_when_changed(request, since_of(request), wait_s, page))


async def job_changes(request: web.Request) -> web.Response:
    """A long poll: answers once the job changed since `since` (see server/live.py)."""
    job_id = _job_id(request)
    wait_s = query_number(request, "wait", 0.0, 0.0, MAX_WAIT_S, clamp=False)
    since = since_of(request)
    record = await job_when_changed(request, job_id, request[CLIENT], since, wait_s)
    if record is None:
        raise job_not_found()
    status = job_view(record.doc, record.leases)["status"]  # "running" once a worker holds it
    return json_response({"job_id": job_id, "change": str(record.version), "status": status})


def _list_item(doc: dict[str, Any]) -> dict[str, Any]:
    """A job in a listing: status and times; the full view is one GET away."""
    view = job_view(doc)
    item = {k: view[k] for k in ("id", "blueprint", "version", "status", "state")}
    item.update(created_at=iso(doc["created_at"]), updated_at=iso(doc["updated_at"]))
    item["finished_at"] = view["finished_at"]
    if "labels" in view:
        item["labels"] = view["labels"]
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
    outcome = await orch.decide_committed(job_id, request[CLIENT], decision)
    if outcome is None:
        raise job_not_found()
    if isinstance(outcome, Ignored):
        raise await refused_decision(orch, job_id, decision, outcome)
    # The job as the decision left it (a read could find it further on already).
    return json_response(await _view(request, orch, outcome.doc, outcome.leases))


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
        job = await orch.get_job(job_id, None)
        approval = job.get("approval") if job is not None else None
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
    events = await orch.history(job_id, request[CLIENT])
    if events is None:  # removed meanwhile (its retention ended)
        raise job_not_found()
    blueprint = await orch.pinned_blueprint(doc)
    return web.Response(
        text=job_dot(blueprint, doc, events), content_type="text/vnd.graphviz", charset="utf-8"
    )


# -- blueprints ---------------------------------------------------------------------------


def _blueprint(request: web.Request) -> Blueprint:
    name = request.match_info["name"]
    blueprint = orchestrator(request).blueprint(name)
    if blueprint is None:
        raise NotFound(
            f"no blueprint named {name[:128]!r} is loaded; GET {PREFIX}/blueprints lists them",
            code="blueprint_not_found",
        )
    return blueprint


async def list_blueprints(request: web.Request) -> web.Response:
    blueprints = [blueprint_summary(b) for b in orchestrator(request).blueprints()]
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


def add_client_routes(app: web.Application) -> None:
    """The `/api/v1` routes on `app`'s router. Fixed routes first: the job-submission route
    catches every other POST path, since an api_endpoint may contain `/`."""
    area = Area(app, PREFIX, client_route, unmatched_client)
    fixed = [
        area.get("/blueprints", list_blueprints),
        area.get("/blueprints/{name}", get_blueprint),
        area.get("/blueprints/{name}/graph", blueprint_graph),
        area.get("/jobs", list_jobs),
        area.get("/jobs/{job_id}", get_job),
        area.get("/jobs/{job_id}/history", job_history),
        area.get("/jobs/{job_id}/graph", job_graph),
        area.get("/jobs/{job_id}/changes", job_changes),
        area.get("/jobs/{job_id}/explain", explain_job),
        area.post("/jobs/{job_id}/cancel", cancel_job),
        area.post("/jobs/{job_id}/approval", decide_approval),
    ]
    from server import job_controls  # it imports this module's helpers

    fixed += job_controls.add_routes(area)  # events, pause, resume, redrive, rerun
    fixed.append(area.get("/workers", list_workers))
    app[FIXED_RESOURCES] = list(dict.fromkeys(fixed))
    area.post("/{api_endpoint:.+}", submit_job)
