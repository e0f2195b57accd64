"""The worker API under `/_worker`: the RXON protocol spoken by `avtomatika-worker` SDKs.

See docs/rxon-protocol.md (§2 for the routes, §6 for why the status codes and the words
"Unauthorized" and "not found" in messages are chosen as they are). Every route needs a
valid `X-Worker-Token` for its `X-Worker-ID`; a path naming another worker is refused.

Two Interlock extensions (docs/rxon-protocol.md §11) save requests per task; an RXON worker
never uses them and sees the routes exactly as RXON has them:
- a poll with `max_tasks=N` answers `{"tasks": [...]}` with up to N tasks (or 204);
- `POST /_worker/tasks/results` takes `{"results": [...]}`, each item a result body, and
  answers `{"results": [...]}`, one answer per item, in order.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections import OrderedDict
from typing import Any

from aiohttp import web

from engine.clock import now_ms
from engine.runtime.orchestrator import Offload
from server.auth import WORKER_ID_HEADER, WORKER_TOKEN_HEADER, TaskTypes, may_poll
from server.errors import BadRequest, Handler, NotFound, json_response
from server.params import (
    json_object,
    json_type,
    optional_str,
    query_int,
    query_number,
    required_str,
)
from server.routing import Area
from server.state import (
    OFFLOAD,
    WORKER,
    WORKER_AUTH,
    orchestrator,
    settings,
    unless_closing,
)

log = logging.getLogger("interlock.server")

DEFAULT_POLL_S = 30.0
MAX_TASKS_PER_POLL = 100  # the most a poll with `max_tasks` may ask for
MAX_RESULTS_PER_BATCH = 100  # the most results one `POST /tasks/results` may carry
SKILLS_TTL_S = 10.0  # how long a worker's registered skills are trusted from memory


class SkillCache:
    """Registered skills per worker id, read from the store at most every SKILLS_TTL_S."""

    def __init__(self, ttl_s: float = SKILLS_TTL_S, max_workers: int = 10_000) -> None:
        self.ttl_s = ttl_s
        self.max_workers = max_workers
        self._skills: OrderedDict[str, tuple[float, tuple[str, ...]]] = OrderedDict()

    def get(self, worker_id: str) -> tuple[str, ...] | None:
        entry = self._skills.get(worker_id)
        if entry is None or time.monotonic() - entry[0] > self.ttl_s:
            return None
        return entry[1]

    def put(self, worker_id: str, skills: tuple[str, ...]) -> None:
        self._skills[worker_id] = (time.monotonic(), skills)
        self._skills.move_to_end(worker_id)
        while len(self._skills) > self.max_workers:
            self._skills.popitem(last=False)


SKILLS = web.AppKey("worker_skills", SkillCache)
TASK_TYPES: web.RequestKey[TaskTypes] = web.RequestKey("task_types")


def _authenticate(request: web.Request) -> None:
    auth = request.app[WORKER_AUTH]
    worker_id, task_types = auth.authenticate(
        request.headers.get(WORKER_ID_HEADER), request.headers.get(WORKER_TOKEN_HEADER)
    )
    path_id = request.match_info.get("worker_id")
    if path_id is not None and path_id != worker_id:
        raise auth.mismatch(worker_id, path_id)
    request[WORKER] = worker_id
    request[TASK_TYPES] = task_types


def worker_route(handler: Handler) -> Handler:
    """`handler` behind the worker's id and token."""

    async def route(request: web.Request) -> web.StreamResponse:
        _authenticate(request)
        return await handler(request)

    return route


def unmatched_worker(request: web.Request, exc: web.HTTPException) -> web.HTTPException:
    """A path under /_worker that no route takes: refused without a valid token, else its
    404 or 405."""
    _authenticate(request)
    return exc


# -- registration and heartbeats ------------------------------------------------------------


def _skill_names(body: dict[str, Any]) -> tuple[str, ...]:
    """Skill names from `supported_skills[].name`, else from `available_skills`."""
    supported = body.get("supported_skills")
    if supported:
        if not isinstance(supported, list) or not all(
            isinstance(s, dict) and isinstance(s.get("name"), str) and s["name"] for s in supported
        ):
            raise BadRequest(
                "supported_skills must be a list of objects with a string name",
                code="invalid_registration",
            )
        return tuple(dict.fromkeys(s["name"] for s in supported))
    return _name_list(body.get("available_skills"), "available_skills")


def _name_list(value: Any, field: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise BadRequest(
            f"{field} must be a list of strings, not {json_type(value)}", code="invalid_field"
        )
    return tuple(dict.fromkeys(v for v in value if v))


async def register(request: web.Request) -> web.Response:
    worker_id = request[WORKER]
    body = await json_object(request)
    claimed = optional_str(body, "worker_id")
    if claimed is not None and claimed != worker_id:
        raise BadRequest(
            f"the body's worker_id {claimed[:128]!r} differs from {WORKER_ID_HEADER} {worker_id!r}",
            code="worker_id_mismatch",
        )
    skills = _skill_names(body)
    registration: dict[str, Any] = {
        "worker_id": worker_id,
        "worker_type": optional_str(body, "worker_type") or "",
        "skills": list(skills),
        "registered_at": now_ms(),
    }
    for key in ("capabilities", "resources"):
        if isinstance(body.get(key), dict):
            registration[key] = body[key]
    await orchestrator(request).register_worker(worker_id, registration)
    request.app[SKILLS].put(worker_id, skills)
    # No access_token: the SDK would switch its X-Worker-Token to it (protocol §2.1).
    return json_response({"status": "registered"})


async def heartbeat(request: web.Request) -> web.Response:
    worker_id = request[WORKER]
    body = await json_object(request, empty_ok=True)
    # A heartbeat without `current_tasks` tells nothing of the tasks: none is judged lost by
    # its absence from it (engine/runtime/tasks.py lease_problem).
    given = body.get("current_tasks")
    tasks = None if given is None else list(_name_list(given, "current_tasks"))
    alive_ms = settings(request).heartbeat_timeout_ms
    skills = request.app[SKILLS].get(worker_id) or ()  # seen: for metrics, explain
    known, cancels = await orchestrator(request).heartbeat(worker_id, tasks, alive_ms, skills)
    if not known:
        # The SDK re-registers when the text holds "not found" (protocol §6). Only a worker
        # whose registration really is gone gets this, or it would loop.
        raise NotFound("Worker not found; register again", code="worker_not_found")
    return json_response({"status": "ok", "cancel_task_ids": cancels})


# -- tasks ------------------------------------------------------------------------------------


async def _skills(request: web.Request, worker_id: str) -> tuple[str, ...]:
    """The task types this poll asks for, less those the worker's token may not poll
    (`task_types` in workers.toml)."""
    allowed = request[TASK_TYPES]
    return tuple(s for s in await _asked_skills(request, worker_id) if may_poll(allowed, s))


async def _asked_skills(request: web.Request, worker_id: str) -> tuple[str, ...]:
    given = request.query.get("available_skills", "")
    skills = tuple(dict.fromkeys(s.strip() for s in given.split(",") if s.strip()))
    if skills:
        return skills
    cache = request.app[SKILLS]
    cached = cache.get(worker_id)
    if cached is None:
        registration = await orchestrator(request).worker_registration(worker_id)
        raw = registration.get("skills", []) if registration else []
        cached = tuple(s for s in raw if isinstance(s, str))
        cache.put(worker_id, cached)
    return cached


def _max_tasks(request: web.Request) -> int | None:
    """The `max_tasks` query parameter: None when absent (an RXON poll), else 1..100."""
    text = request.query.get("max_tasks")
    if text is None:
        return None
    if text == "":
        raise BadRequest(
            f"query parameter max_tasks='' must be a whole number from 1 to {MAX_TASKS_PER_POLL}",
            code="invalid_query",
        )
    return query_int(request, "max_tasks", 1, 1, MAX_TASKS_PER_POLL)


async def next_task(request: web.Request) -> web.Response:
    """One task (RXON), or with `max_tasks=N` (Interlock) `{"tasks": [...]}` with 1..N."""
    worker_id = request[WORKER]
    poll_max = settings(request).worker_poll_max_s
    wait_s = query_number(
        request, "timeout", min(DEFAULT_POLL_S, poll_max), 0.0, poll_max, clamp=True
    )
    max_tasks = _max_tasks(request)
    skills = await _skills(request, worker_id)
    orch = orchestrator(request)

    # Asked before every lease the poll may get: the transport is looked up once (a closed
    # connection's transport says it is closing).
    transport = request.transport

    def gone() -> bool:  # the worker closed the connection (it died, or gave up waiting)
        return transport is None or transport.is_closing()

    work = orch.next_tasks(worker_id, skills, wait_s, max_tasks or 1, gone)
    tasks = await unless_closing(request, work, [])
    if not tasks:
        return web.Response(status=204)
    response = json_response({"tasks": tasks} if max_tasks is not None else tasks[0])
    if not gone():
        try:  # written here, so that a failed write is known and its tasks put back
            await response.prepare(request)
            await response.write_eof()
            return response
        except ConnectionError as exc:
            log.info("poll of worker %s closed before its tasks were sent: %s", worker_id, exc)
    # Leased to a connection that is gone: back to the queue at once, the attempt uncounted.
    for task in tasks:
        await orch.release(worker_id, task)
    return response


def _check_result(body: dict[str, Any]) -> None:
    """What `POST /tasks/result` checks before the engine sees a result (protocol §4)."""
    required_str(body, "job_id")
    required_str(body, "task_id")
    status = optional_str(body, "status")  # missing means success (protocol §4)
    if status == "":
        raise BadRequest(
            "'status' must not be empty; leave it out for success", code="invalid_field"
        )


def _result_check(request: web.Request, size: int) -> Offload | None:
    """How a result's output_schema check runs: off the event loop for a body of at least
    CHECK_OFF_LOOP_BYTES (as a submit's input_schema check), else where it is applied."""
    offload = request.app[OFFLOAD]
    if size < offload.off_loop_bytes:
        return None
    return functools.partial(offload.run, size)


async def task_result(request: web.Request) -> web.Response:
    body = await json_object(request)
    _check_result(body)
    check = _result_check(request, len(await request.read()))  # (read: kept by aiohttp)
    answer = await orchestrator(request).submit_result(request[WORKER], body, check)
    return json_response(answer)


async def task_results(request: web.Request) -> web.Response:
    """Interlock extension: several results in one request, each applied as `task_result`
    would, concurrently (so that their store writes can share round trips). An item that
    fails the checks is answered `ignored`/`invalid_result` and sinks no other; a store
    failure on any item makes the whole answer a 503, and the worker resends them all
    (intake is idempotent)."""
    body = await json_object(request)
    items = body.get("results")
    if not isinstance(items, list) or not items or len(items) > MAX_RESULTS_PER_BATCH:
        what = f"{len(items)} items" if isinstance(items, list) else json_type(items)
        wanted = f"a list of 1 to {MAX_RESULTS_PER_BATCH} result objects"
        raise BadRequest(f"'results' must be {wanted}, not {what}", code="invalid_field")
    worker_id = request[WORKER]
    orch = orchestrator(request)
    check = _result_check(request, len(await request.read()))

    async def one(index: int, item: Any) -> dict[str, Any]:
        try:
            if not isinstance(item, dict):
                raise BadRequest(f"a result must be an object, not {json_type(item)}")
            _check_result(item)
        except BadRequest as exc:
            message = f"results[{index}]: {exc.message}"
            return {"status": "ignored", "reason": "invalid_result", "message": message}
        return await orch.submit_result(worker_id, item, check)

    outcomes = await asyncio.gather(
        *(one(i, item) for i, item in enumerate(items)), return_exceptions=True
    )
    answers: list[dict[str, Any]] = []
    for outcome in outcomes:
        if isinstance(outcome, BaseException):
            raise outcome  # the error middleware renders it (a StoreUnavailable is a 503)
        answers.append(outcome)
    return json_response({"results": answers})


async def worker_event(request: web.Request) -> web.Response:
    body = await json_object(request)
    event_type = required_str(body, "event_type")
    job_id = optional_str(body, "target_job_id")
    task_id = optional_str(body, "target_task_id") or optional_str(body, "origin_task_id")
    if event_type != "progress":
        return json_response({"status": "ignored", "reason": "unsupported_event_type"})
    if not job_id or not task_id:
        return json_response({"status": "ignored", "reason": "no_target_task"})
    payload = body.get("payload", {})
    outcome = await orchestrator(request).progress(request[WORKER], job_id, task_id, payload)
    if outcome == "accepted":
        return json_response({"status": "accepted"})
    return json_response({"status": "ignored", "reason": outcome})


async def no_token_service(request: web.Request) -> web.Response:
    raise NotFound(
        "this server has no token service; workers use their configured X-Worker-Token",
        code="no_token_service",
    )


def add_worker_routes(app: web.Application) -> None:
    """The `/_worker` routes on `app`'s router."""
    area = Area(app, "/_worker", worker_route, unmatched_worker)
    area.post("/workers/register", register)
    area.add("PATCH", "/workers/{worker_id}", heartbeat)
    area.get("/workers/{worker_id}/tasks/next", next_task)
    area.post("/tasks/result", task_result)
    area.post("/tasks/results", task_results)  # Interlock extension
    area.post("/events", worker_event)
    area.post("/auth/token", no_token_service)
    area.post("/auth/token/refresh", no_token_service)
