"""The OpenAPI 3.1 document of the client, worker and public APIs, and its human page.

`GET /api/v1/openapi.json` answers `document(blueprints)`: the fixed routes below, plus one
submission path per loaded blueprint (`POST /api/v1/<api_endpoint>`) whose `initial_data`
schema is that blueprint's own `input_schema`, so a generated client knows what each job
takes. `GET /api/docs` is a self-contained HTML page (no script or style from elsewhere,
so it works offline) that renders this document.

tests/server/test_openapi.py keeps it honest: every route of the router is in it and every
operation in it is routed; schemathesis calls a live server with what the document allows
and checks the answers against it.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from importlib import resources
from typing import Any

from engine.blueprint.model import Blueprint
from server.labels import MAX_FILTERS, MAX_LABELS, MAX_VALUE
from server.labels import NAME as LABEL_NAME
from server.views import plain

Schema = dict[str, Any]

VERSION = "0.1.0"


def ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def _obj(required: Iterable[str] = (), **properties: Any) -> Schema:
    return {"type": "object", "required": list(required), "properties": properties}


STR: Schema = {"type": "string"}
# server/labels.py: a name, and a value of printable characters.
LABEL_VALUE: Schema = {
    "type": "string",
    "minLength": 1,
    "maxLength": MAX_VALUE,
    "pattern": "^[^\\x00-\\x1f\\x7f]*$",
}
LABEL_FILTER = LABEL_NAME.pattern[:-1] + ":[^\\x00-\\x1f\\x7f]{1," + str(MAX_VALUE) + "}$"
INT: Schema = {"type": "integer"}
TIME: Schema = {"type": ["string", "null"], "format": "date-time"}
ANY: Schema = {}

SCHEMAS: dict[str, Schema] = {
    "Error": {
        "description": "Every error answer, from every route (4xx and 5xx).",
        **_obj(
            ["error"],
            error=_obj(
                ["code", "message", "details"],
                code={**STR, "description": "machine-readable, e.g. job_not_found"},
                message={**STR, "description": "what went wrong and what would be right"},
                details={"description": "structured details (e.g. each field at fault), or null"},
            ),
        ),
    },
    "SubmitRequest": {
        **_obj(
            [],
            initial_data={"type": "object", "description": "checked against input_schema"},
            webhook_url={**STR, "format": "uri", "description": "POSTed to when the job ends"},
            dispatch_timeout={"description": "e.g. 30s, 5m (or seconds)"},
            result_timeout={"description": "e.g. 1h (or seconds)"},
            job_id={
                **STR,
                "pattern": "^[A-Za-z0-9_-]{1,100}$",
                "description": "an id of the client's choosing: the job is "
                "`<job_id>-<client tag>`; the same job_id and body again answer 200 with "
                "that job, another body 409 (not with Idempotency-Key)",
            },
            labels={
                "type": "object",
                "description": "name: value strings to find the job by (GET /api/v1/jobs?label=)",
                "maxProperties": MAX_LABELS,
                "propertyNames": {"pattern": LABEL_NAME.pattern},
                "additionalProperties": LABEL_VALUE,
            },
        ),
        "additionalProperties": False,
    },
    "Accepted": _obj(["status", "job_id"], status={"const": "accepted"}, job_id=STR),
    "Job": _obj(
        ["id", "blueprint", "version", "status", "state", "created_at", "updated_at"],
        id=STR,
        blueprint=STR,
        version=INT,
        status=STR,
        state={"type": ["string", "null"]},
        created_at=TIME,
        updated_at=TIME,
        finished_at=TIME,
        task={"type": "object"},
        tasks={"type": "array", "items": {"type": "object"}},
        approval={"type": "object"},
        labels={"type": "object", "additionalProperties": STR},
        listen={"type": "object", "description": "the event a listen state waits for"},
        paused={"type": "object", "description": "since when and by whom, while paused"},
        concurrency={
            "type": "object",
            "description": "a job of a blueprint with `concurrency`: its key and limit; "
            "`waiting`, with `since` and `reason` while it waits for a slot, else its "
            "`admission` number",
        },
        result=ANY,
        error={"type": "object"},
    ),
    "JobList": _obj(
        ["jobs", "next_cursor"],
        jobs={"type": "array", "items": ref("Job")},
        next_cursor={"type": ["string", "null"]},
    ),
    "History": _obj(
        ["job_id", "events"],
        job_id=STR,
        events={
            "type": "array",
            "items": _obj(["timestamp", "event"], timestamp=TIME, event=STR),
        },
    ),
    "Explanation": _obj(
        ["job_id", "status", "sentence", "facts"],
        job_id=STR,
        status=STR,
        state={"type": ["string", "null"]},
        sentence={**STR, "description": "why the job is where it is, in one sentence"},
        facts={"type": "object", "description": "the same as structured values"},
    ),
    "Redrive": {
        **_obj(
            [],
            initial_data_patch={
                "type": "object",
                "description": "a JSON Merge Patch (RFC 7396) applied to the job's initial_data",
            },
        ),
        "additionalProperties": False,
    },
    "Rerun": {
        **_obj(
            ["from_state"],
            from_state={**STR, "minLength": 1, "description": "the state to run again from"},
            initial_data_patch={"type": "object", "description": "as for a redrive"},
        ),
        "additionalProperties": False,
    },
    "Decision": {
        **_obj(["decision"], decision={**STR, "minLength": 1}),
        "additionalProperties": False,
    },
    "BlueprintSummary": _obj(
        ["name", "version", "content_hash"],
        name=STR,
        version=INT,
        description=STR,
        api_endpoint={"type": ["string", "null"]},
        content_hash=STR,
    ),
    "BlueprintList": _obj(
        ["blueprints"], blueprints={"type": "array", "items": ref("BlueprintSummary")}
    ),
    "Blueprint": {
        "allOf": [
            ref("BlueprintSummary"),
            _obj(["start", "states"], start=STR, input_schema=ANY, states={"type": "array"}),
        ]
    },
    "Registration": _obj(
        [],
        worker_id=STR,
        worker_type=STR,
        supported_skills={
            "type": "array",
            "items": _obj(["name"], name={**STR, "minLength": 1}, type=STR),
        },
        available_skills={"type": "array", "items": STR},
        capabilities={"type": "object"},
        resources={"type": "object"},
    ),
    "Heartbeat": _obj([], current_tasks={"type": "array", "items": STR}),
    "HeartbeatAnswer": _obj(
        ["status", "cancel_task_ids"],
        status={"const": "ok"},
        cancel_task_ids={"type": "array", "items": STR},
    ),
    "Task": _obj(
        ["job_id", "task_id", "type"],
        job_id=STR,
        task_id=STR,
        type=STR,
        params=ANY,
        tracing_context={"type": "object"},
    ),
    "Tasks": _obj(["tasks"], tasks={"type": "array", "items": ref("Task"), "minItems": 1}),
    "Result": _obj(
        ["job_id", "task_id"],
        job_id={**STR, "minLength": 1},
        task_id={**STR, "minLength": 1},
        worker_id={"type": ["string", "null"]},
        status={
            "type": ["string", "null"],
            "minLength": 1,
            "description": "success (default when absent or null), failure, or a name",
        },
        data=ANY,
        error=ANY,
    ),
    "Results": _obj(
        ["results"],
        results={"type": "array", "items": ref("Result"), "minItems": 1, "maxItems": 100},
    ),
    "Outcome": _obj(
        ["status"],
        status={"enum": ["accepted", "ignored"]},
        reason=STR,
        message=STR,
    ),
    "Outcomes": _obj(["results"], results={"type": "array", "items": ref("Outcome")}),
    "WorkerEvent": _obj(
        ["event_type"],
        event_type={**STR, "minLength": 1},
        target_job_id={"type": ["string", "null"]},
        target_task_id={"type": ["string", "null"]},
        origin_task_id={"type": ["string", "null"]},
        payload=ANY,
    ),
    "Status": _obj(["status"], status=STR, store=STR),
    "Approval": _obj(
        ["job_id", "decisions", "how_to_decide"],
        job_id=STR,
        blueprint={"type": ["string", "null"]},
        state={"type": ["string", "null"]},
        message={"type": ["string", "null"]},
        decisions={"type": "array", "items": STR},
        asked_at=TIME,
        timeout_at=TIME,
        how_to_decide={"type": "object"},
    ),
    "ApprovalDecided": _obj(
        ["status", "job_id", "decision", "job_status"],
        status={"const": "accepted"},
        job_id=STR,
        decision=STR,
        job_status=STR,
        state={"type": ["string", "null"]},
    ),
}

ERRORS = {
    "400": "The request is malformed; `error.details` names each field at fault",
    "401": "X-Client-Token is missing or not valid",
    "403": "The worker's X-Worker-ID / X-Worker-Token are missing or not valid",
    "404": "Not found (an unknown id, another client's job, or no such route)",
    "405": "The method is not allowed on this path",
    "409": "The job's state does not allow this (e.g. already ended), or an Idempotency-Key "
    "or job_id was already used for another request",
    "413": "The body is larger than MAX_BODY_BYTES",
    "503": "The job store is unavailable; retry later",
}


def _json(schema: Schema, description: str) -> Schema:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _op(
    summary: str,
    ok: dict[str, Schema],
    errors: Iterable[str],
    *,
    security: str | None,
    body: Schema | None = None,
    parameters: Iterable[Schema] = (),
    tag: str,
    body_required: bool = True,
) -> Schema:
    responses: dict[str, Schema] = dict(ok)
    codes = set(errors) | {"503"}
    if security == "client":
        codes.add("401")
    elif security == "worker":
        codes.add("403")
    if body is not None:
        codes |= {"400", "413"}
    for code in sorted(codes):
        responses[code] = {"$ref": f"#/components/responses/E{code}"}
    op: Schema = {"summary": summary, "tags": [tag], "responses": responses}
    if security == "client":
        op["security"] = [{"ClientToken": []}]
    elif security == "worker":
        op["security"] = [{"WorkerToken": [], "WorkerId": []}]
    else:
        op["security"] = []
    if body is not None:
        op["requestBody"] = {
            "required": body_required,
            "content": {"application/json": {"schema": body}},
        }
    if parameters:
        op["parameters"] = list(parameters)
    return op


def _path_param(name: str, description: str) -> Schema:
    return {
        "name": name,
        "in": "path",
        "required": True,
        "description": description,
        "schema": STR,
    }


def _query(name: str, schema: Schema, description: str) -> Schema:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "schema": schema,
        "description": description,
    }


CURSOR = "^([0-9]{1,15}-[A-Za-z0-9]{1,64})?$"  # orchestrator.parse_cursor
# Durations as the API takes them (engine/durations.py): more than 0, at most 366 days.
DURATION: Schema = {
    "oneOf": [
        {"type": "number", "exclusiveMinimum": 0, "maximum": 366 * 86400},
        {"type": "string", "pattern": "^(?=.*[1-9])[0-9]{1,6}(ms|s|m|h)$"},
    ]
}
JOB_ID = _path_param(
    "job_id", "the id returned on submission, or the `job_id` the client chose in it"
)
IDEMPOTENCY_KEY = {
    "name": "Idempotency-Key",
    "in": "header",
    "required": False,
    "description": "the same on every retry of one submit: the same key and body answer 200 "
    "with the job the first made, another body 409",
    "schema": {**STR, "pattern": "^[!-~]{1,255}$"},
}
NAME = _path_param("name", "a blueprint name")
WORKER_ID = _path_param("worker_id", "the worker's id; must equal X-Worker-ID")
TOKEN = _path_param("token", "the approval link's token")
JOB_STATUSES = [
    "pending", "queued", "running", "retrying", "waiting", "waiting_for_human", "paused",
    "finished", "failed", "cancelled",
]  # fmt: skip
DOT = {"description": "Graphviz DOT", "content": {"text/vnd.graphviz": {"schema": STR}}}


def _paths() -> dict[str, dict[str, Schema]]:
    c, w, p = "client", "worker", "public"
    job = _json(ref("Job"), "The job")
    return {
        "/api/v1/blueprints": {
            "get": _op(
                "List the loaded blueprints",
                {"200": _json(ref("BlueprintList"), "The blueprints")},
                [],
                security=c,
                tag=c,
            )
        },
        "/api/v1/blueprints/{name}": {
            "get": _op(
                "A blueprint's states and input schema",
                {"200": _json(ref("Blueprint"), "The blueprint")},
                ["404"],
                security=c,
                parameters=[NAME],
                tag=c,
            )
        },
        "/api/v1/blueprints/{name}/graph": {
            "get": _op(
                "A blueprint as Graphviz DOT",
                {"200": DOT},
                ["404"],
                security=c,
                parameters=[NAME],
                tag=c,
            )
        },
        "/api/v1/workers": {
            "get": _op(
                "Registered workers and the tasks waiting per task type (the web console)",
                {
                    "200": _json(
                        _obj(
                            ["workers", "queues"],
                            workers={"type": "array", "items": {"type": "object"}},
                            queues={"type": "array", "items": {"type": "object"}},
                        ),
                        "Workers, most recently seen first, and queue depths",
                    )
                },
                [],
                security=c,
                tag=c,
            )
        },
        "/api/v1/jobs": {
            "get": _op(
                "The client's jobs, newest first",
                {"200": _json(ref("JobList"), "One page of jobs")},
                ["400"],
                security=c,
                tag=c,
                parameters=[
                    _query(
                        "status", {"enum": ["", *JOB_STATUSES]}, "only this status (empty: any)"
                    ),
                    _query(
                        "blueprint",
                        {**STR, "pattern": "^[A-Za-z0-9_-]{0,128}$"},
                        "only this blueprint's jobs",
                    ),
                    _query("limit", {**INT, "minimum": 1, "maximum": 200}, "page size (50)"),
                    _query(
                        "label",
                        {
                            "type": "array",
                            "maxItems": MAX_FILTERS,
                            "items": {**STR, "pattern": LABEL_FILTER},
                        },
                        "only jobs with this label, as name:value (repeat it: all must match)",
                    ),
                    _query(
                        "cursor", {**STR, "pattern": CURSOR}, "next_cursor of the previous page"
                    ),
                ],
            )
        },
        "/api/v1/jobs/{job_id}": {
            "get": _op(
                "A job, optionally once it has ended",
                {"200": job},
                ["400", "404"],
                security=c,
                tag=c,
                parameters=[
                    JOB_ID,
                    _query(
                        "wait",
                        {"type": "number", "minimum": 0, "maximum": 60},
                        "seconds to wait for the end",
                    ),
                ],
            )
        },
        "/api/v1/jobs/{job_id}/history": {
            "get": _op(
                "The job's events in order",
                {"200": _json(ref("History"), "Its history")},
                ["404"],
                security=c,
                parameters=[JOB_ID],
                tag=c,
            )
        },
        "/api/v1/jobs/{job_id}/explain": {
            "get": _op(
                "Why the job is where it is",
                {"200": _json(ref("Explanation"), "One sentence and the facts")},
                ["404"],
                security=c,
                parameters=[JOB_ID],
                tag=c,
            )
        },
        "/api/v1/jobs/{job_id}/changes": {
            "get": _op(
                "A long poll: answers once the job changed since `since` (the web console)",
                {
                    "200": _json(
                        _obj(["job_id", "change", "status"], job_id=STR, change=STR, status=STR),
                        "The job's change token and status",
                    )
                },
                ["400", "404"],
                security=c,
                parameters=[
                    JOB_ID,
                    _query("since", {**STR, "maxLength": 64}, "the `change` of a previous answer"),
                    _query("wait", {"type": "number", "minimum": 0, "maximum": 60}, "seconds"),
                ],
                tag=c,
            )
        },
        "/api/v1/jobs/{job_id}/graph": {
            "get": _op(
                "The job's path drawn on its blueprint, as DOT",
                {"200": DOT},
                ["404"],
                security=c,
                parameters=[JOB_ID],
                tag=c,
            )
        },
        "/api/v1/jobs/{job_id}/cancel": {
            "post": _op(
                "Cancel a job", {"200": job}, ["404", "409"], security=c, parameters=[JOB_ID], tag=c
            )
        },
        "/api/v1/jobs/{job_id}/approval": {
            "post": _op(
                "Decide a job's approval as its owner",
                {"200": job},
                ["404", "409"],
                security=c,
                body=ref("Decision"),
                parameters=[JOB_ID],
                tag=c,
            )
        },
        **{
            f"/api/v1/jobs/{{job_id}}/{action}": {
                "post": _op(
                    summary, {"200": job}, ["404", "409"], security=c, parameters=[JOB_ID], tag=c
                )
            }
            for action, summary in (
                (
                    "pause",
                    "Pause a job: it stays in its state (running tasks finish, nothing new is "
                    "dispatched) until resumed; 409 if paused already or ended",
                ),
                ("resume", "Resume a paused job; 409 if it is not paused"),
            )
        },
        "/api/v1/jobs/{job_id}/redrive": {
            "post": _op(
                "Run a failed or cancelled job again from the state that failed, keeping its "
                "history and outputs; 409 if it has not ended, finished, or cannot run again",
                {"200": job},
                ["404", "409"],
                security=c,
                body=ref("Redrive"),
                body_required=False,
                parameters=[JOB_ID],
                tag=c,
            )
        },
        "/api/v1/jobs/{job_id}/rerun": {
            "post": _op(
                "Run an ended job again from a named state; 400 for a state its blueprint "
                "does not have",
                {"200": job},
                ["404", "409"],
                security=c,
                body=ref("Rerun"),
                parameters=[JOB_ID],
                tag=c,
            )
        },
        "/api/v1/jobs/{job_id}/events/{name}": {
            "post": _op(
                "Send an event to a job; the listen state waiting for it takes the body as "
                "its payload (400: it breaks the state's schema; 409: no state listens for it)",
                {"200": job},
                ["404", "409"],
                security=c,
                body={"type": "object", "description": "the event's payload"},
                body_required=False,
                parameters=[
                    JOB_ID,
                    {
                        **_path_param("name", "the event's name (a listen state's `event`)"),
                        "schema": {**STR, "pattern": "^[a-z][a-z0-9_]{0,63}$"},
                    },
                ],
                tag=c,
            )
        },
        "/_worker/workers/register": {
            "post": _op(
                "Register a worker and its skills",
                {"200": _json(_obj(["status"], status={"const": "registered"}), "Registered")},
                [],
                security=w,
                body=ref("Registration"),
                tag=w,
            )
        },
        "/_worker/workers/{worker_id}": {
            "patch": _op(
                "Heartbeat; answers the tasks to cancel",
                {"200": _json(ref("HeartbeatAnswer"), "Alive")},
                ["404"],
                security=w,
                body=ref("Heartbeat"),
                body_required=False,
                parameters=[WORKER_ID],
                tag=w,
            )
        },
        "/_worker/workers/{worker_id}/tasks/next": {
            "get": _op(
                "Long-poll for the next task (or up to max_tasks tasks)",
                {
                    "200": _json({"oneOf": [ref("Task"), ref("Tasks")]}, "A task, or {tasks}"),
                    "204": {"description": "No task within the timeout"},
                },
                ["400"],
                security=w,
                tag=w,
                parameters=[
                    WORKER_ID,
                    _query("timeout", {"type": "number", "minimum": 0}, "seconds to wait"),
                    _query(
                        "max_tasks", {**INT, "minimum": 1, "maximum": 100}, "answer {tasks: [...]}"
                    ),
                    _query("available_skills", STR, "comma-separated task types"),
                ],
            )
        },
        "/_worker/tasks/result": {
            "post": _op(
                "Report a task's result",
                {"200": _json(ref("Outcome"), "Accepted or ignored")},
                [],
                security=w,
                body=ref("Result"),
                tag=w,
            )
        },
        "/_worker/tasks/results": {
            "post": _op(
                "Report several results (Interlock extension)",
                {"200": _json(ref("Outcomes"), "One outcome per result")},
                [],
                security=w,
                body=ref("Results"),
                tag=w,
            )
        },
        "/_worker/events": {
            "post": _op(
                "Report progress of a task",
                {"200": _json(ref("Outcome"), "Accepted or ignored")},
                [],
                security=w,
                body=ref("WorkerEvent"),
                tag=w,
            )
        },
        "/_worker/auth/token": {
            "post": _op(
                "Not offered: workers use their X-Worker-Token", {}, ["404"], security=w, tag=w
            )
        },
        "/_worker/auth/token/refresh": {
            "post": _op(
                "Not offered: workers use their X-Worker-Token", {}, ["404"], security=w, tag=w
            )
        },
        "/_public/status": {
            "get": _op(
                "Liveness: 200 while the store answers",
                {"200": _json(ref("Status"), "Up")},
                [],
                security=None,
                tag=p,
            )
        },
        "/_public/approvals/{job_id}/{token}": {
            "get": _op(
                "What an approval link asks",
                {"200": _json(ref("Approval"), "The question")},
                ["404"],
                security=None,
                parameters=[JOB_ID, TOKEN],
                tag=p,
            ),
            "post": _op(
                "Decide through the approval link",
                {"200": _json(ref("ApprovalDecided"), "Decided")},
                ["404", "409"],
                security=None,
                body=ref("Decision"),
                parameters=[JOB_ID, TOKEN],
                tag=p,
            ),
        },
        "/api/v1/openapi.json": {
            "get": _op(
                "This document",
                {"200": _json({"type": "object"}, "OpenAPI 3.1")},
                [],
                security=None,
                tag=p,
            )
        },
        "/api/docs": {
            "get": _op(
                "This document as a page",
                {"200": {"description": "HTML", "content": {"text/html": {"schema": STR}}}},
                [],
                security=None,
                tag=p,
            )
        },
        "/metrics": {
            "get": _op(
                "Prometheus metrics (unless METRICS=off)",
                {
                    "200": {
                        "description": "Prometheus text format",
                        "content": {"text/plain": {"schema": STR}},
                    }
                },
                ["404"],
                security=None,
                tag=p,
            )
        },
    }


def _submit_op(blueprint: Blueprint) -> Schema:
    body = copy.deepcopy(SCHEMAS["SubmitRequest"])
    for name in ("dispatch_timeout", "result_timeout"):
        body["properties"][name].update(DURATION)
    body["properties"]["webhook_url"].update(maxLength=2048, pattern="^https?://[A-Za-z0-9]")
    if blueprint.input_schema is not None:
        body["properties"]["initial_data"] = plain(blueprint.input_schema)
    validator = blueprint.input_validator
    if validator is not None and not validator.is_valid({}):
        body["required"] = ["initial_data"]  # {} (the default) would be refused
    return _op(
        f"Submit a {blueprint.name} job"
        + (f": {blueprint.description}" if blueprint.description else ""),
        {
            "202": _json(ref("Accepted"), "Accepted; Location is the job's URL"),
            "200": _json(
                ref("Accepted"),
                "The same request (Idempotency-Key or job_id) made "
                "this job before; Location is its URL",
            ),
        },
        ["400", "409"],
        security="client",
        body=body,
        parameters=[IDEMPOTENCY_KEY],
        tag="client",
    )


def document(blueprints: Iterable[Blueprint]) -> Schema:
    """The OpenAPI 3.1 document for a server with these blueprints loaded."""
    paths = _paths()
    for blueprint in sorted(blueprints, key=lambda b: b.name):
        if blueprint.api_endpoint:
            paths[f"/api/v1/{blueprint.api_endpoint}"] = {"post": _submit_op(blueprint)}
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Interlock",
            "version": VERSION,
            "description": "Client API (X-Client-Token), worker API (X-Worker-ID and "
            "X-Worker-Token) and public endpoints of an Interlock orchestrator. Every error "
            "answer is an Error.",
        },
        "tags": [
            {"name": "client", "description": "Jobs and blueprints, for client systems"},
            {"name": "worker", "description": "The worker long-poll protocol (RXON)"},
            {"name": "public", "description": "No token: status, approval links, this document"},
        ],
        "paths": paths,
        "components": {
            "schemas": SCHEMAS,
            "responses": {
                f"E{code}": _json(ref("Error"), text) for code, text in sorted(ERRORS.items())
            },
            "securitySchemes": {
                "ClientToken": {"type": "apiKey", "in": "header", "name": "X-Client-Token"},
                "WorkerToken": {"type": "apiKey", "in": "header", "name": "X-Worker-Token"},
                "WorkerId": {"type": "apiKey", "in": "header", "name": "X-Worker-ID"},
            },
        },
    }


def docs_page() -> str:
    """The human page: server/static/api-docs.html, which fetches the document and renders
    it with a few lines of its own script (nothing loaded from elsewhere)."""
    return resources.files("server").joinpath("static/api-docs.html").read_text("utf-8")
