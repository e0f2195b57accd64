"""`GET /api/v1/jobs/{id}/explain`: why a job is where it is, in one sentence and as facts.

The facts come from the job document, its task leases, its history (the last retry's
error), the worker index (`keys.skill_workers`: who serves a task type, last seen when)
and the holding worker's heartbeat. Durations in the sentence are rounded for people
(`4m12s`); the facts carry epoch-free values: ISO times and whole milliseconds.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from engine.clock import now_ms
from engine.runtime.concurrency import describe
from engine.runtime.jobdoc import TERMINAL, TaskLease
from engine.runtime.orchestrator import Orchestrator
from server.client_api import _job_id, job_not_found, task_type_of
from server.errors import json_response
from server.state import CLIENT, SETTINGS, orchestrator
from server.views import iso, job_view


def human(ms: int | float) -> str:
    """Milliseconds as `850ms`, `42s`, `4m12s`, `3h5m`, `2d4h`."""
    ms = int(max(0, ms))
    if ms < 1000:
        return f"{ms}ms"
    s = ms // 1000
    for unit, size, sub, sub_size in (("d", 86400, "h", 3600), ("h", 3600, "m", 60)):
        if s >= size:
            rest = (s % size) // sub_size
            return f"{s // size}{unit}{rest}{sub}" if rest else f"{s // size}{unit}"
    if s >= 60:
        return f"{s // 60}m{s % 60}s" if s % 60 else f"{s // 60}m"
    return f"{s}s"


async def workers_for(
    orch: Orchestrator, task_type: str, connected_ms: int, now: int
) -> tuple[int, int | None]:
    """(workers seen within `connected_ms`, ms since any was last seen or None)."""
    return await orch.workers_seen(task_type, connected_ms, now)


async def _queued(
    orch: Orchestrator, task: dict[str, Any], connected_ms: int, now: int
) -> tuple[str, dict[str, Any]]:
    count, last_seen = await workers_for(orch, task["type"], connected_ms, now)
    facts: dict[str, Any] = {
        "task_id": task["id"],
        "task_type": task["type"],
        "attempt": task["attempt"],
        "queued_for_ms": now - task["queued_at"],
        "workers_connected": count,
        "workers_last_seen_ms_ago": last_seen,
        "dispatch_timeout_in_ms": (
            task["dispatch_deadline"] - now if task.get("dispatch_deadline") else None
        ),
    }
    seen = f" (last seen {human(last_seen)} ago)" if last_seen is not None else " (never seen)"
    workers = f"{count} worker{'s' if count != 1 else ''} connected for task type "
    sentence = (
        f"queued {human(facts['queued_for_ms'])} at state `{task['state']}`: {workers}"
        f"`{task['type']}`{seen if count == 0 else ''}"
    )
    if facts["dispatch_timeout_in_ms"] is not None:
        sentence += f"; dispatch timeout in {human(facts['dispatch_timeout_in_ms'])}"
    return sentence, facts


async def _running(
    orch: Orchestrator, task: dict[str, Any], lease: TaskLease, now: int
) -> tuple[str, dict[str, Any]]:
    alive = await orch.worker_alive(lease.worker)
    beat = int(alive["at"]) if alive and "at" in alive else None
    facts = {
        "task_id": task["id"],
        "task_type": task["type"],
        "attempt": task["attempt"],
        "worker_id": lease.worker,
        "running_for_ms": now - lease.leased_at,
        "last_heartbeat_ms_ago": now - beat if beat is not None else None,
        "run_timeout_in_ms": lease.leased_at + task["run_ms"] - now,
    }
    heard = (
        f"last heartbeat {human(facts['last_heartbeat_ms_ago'])} ago"
        if beat is not None
        else "no heartbeat on record (the worker may be gone)"
    )
    sentence = (
        f"running `{task['state']}` on worker {lease.worker} for "
        f"{human(facts['running_for_ms'])}, {heard}, run timeout in "
        f"{human(facts['run_timeout_in_ms'])}"
    )
    return sentence, facts


async def explain(
    orch: Orchestrator, doc: dict[str, Any], leases: dict[str, str], connected_ms: int
) -> tuple[str, dict[str, Any]]:
    """(sentence, facts) for a job as it is now. A worker counts as connected when it
    registered or heartbeated within `connected_ms` (HEARTBEAT_TIMEOUT)."""
    now = now_ms()
    status, state = doc["status"], doc.get("state")
    facts: dict[str, Any] = {"since": iso(doc.get("updated_at"))}
    if status in TERMINAL:
        error = doc.get("error") or {}
        sentence = f"{status} at state `{state}` at {iso(doc.get('finished_at'))}"
        if error.get("code"):
            sentence += f" with {error['code']} {str(error.get('message', ''))[:200]!r}"
            facts["error"] = {"code": error.get("code"), "message": error.get("message")}
        return sentence, facts
    paused = doc.get("paused")
    if isinstance(paused, dict):
        at = int(paused.get("at") or now)
        held = paused.get("held")
        facts["paused"] = {"at": iso(at), "by": paused.get("by"), "held": held}
        sentence = (
            f"paused at state `{state}` by {paused.get('by')} since {iso(at)} ({human(now - at)}); "
            f"POST /api/v1/jobs/{doc['id']}/resume carries on"
        )
        if isinstance(held, dict) and "to" in held:
            sentence += f", moving to `{held['to']}` at once"
        return sentence, facts
    slot = doc.get("slot")
    if isinstance(slot, dict) and slot.get("enter") is not None:
        return await _waiting_for_slot(orch, doc, slot, now)
    approval = doc.get("approval")
    if status == "waiting_for_human" and isinstance(approval, dict):
        asked = int(approval.get("asked_at") or now)
        facts.update(
            decisions=approval.get("decisions", []),
            asked_at=iso(asked),
            waiting_ms=now - asked,
            timeout_in_ms=approval["timeout_at"] - now if approval.get("timeout_at") else None,
        )
        sentence = (
            f"waiting for approval at state `{approval.get('state')}` since {iso(asked)} "
            f"({human(now - asked)}; decisions: {', '.join(facts['decisions'])}); "
            "the approval link is in the job's view"
        )
        if facts["timeout_in_ms"] is not None:
            sentence += f"; times out in {human(facts['timeout_in_ms'])}"
        return sentence, facts
    parts: list[str] = []
    tasks: list[dict[str, Any]] = []
    for task_id, task in (doc.get("tasks") or {}).items():
        raw = leases.get(task_id)
        lease = TaskLease.decode(raw) if raw else None
        if lease is not None and lease.state == "leased":
            sentence, task_facts = await _running(orch, task, lease, now)
        else:
            sentence, task_facts = await _queued(orch, task, connected_ms, now)
        parts.append(sentence)
        tasks.append(task_facts)
    for retry in doc.get("retries") or []:
        sentence, retry_facts = await _retrying(orch, doc, retry, now)
        parts.append(sentence)
        tasks.append(retry_facts)
    if tasks:
        facts["tasks"] = tasks
    if doc.get("wait_until") is not None:
        parts.append(f"waiting at state `{state}` until {iso(doc['wait_until'])}")
        facts["wait_until"] = iso(doc["wait_until"])
    listen = doc.get("listen")
    if isinstance(listen, dict):
        since = int(listen.get("since") or now)
        parts.append(
            f"listening at state `{state}` for event `{listen.get('event')}` since {iso(since)} "
            f"({human(now - since)}); POST /api/v1/jobs/{doc['id']}/events/{listen.get('event')}"
            " delivers it"
        )
        facts["listen"] = {
            "event": listen.get("event"),
            "timeout_at": iso(listen.get("timeout_at")),
        }
    subflow = doc.get("subflow")
    if isinstance(subflow, dict):
        parts.append(f"waiting for child job {subflow.get('child_id')} at state `{state}`")
        facts["child_job_id"] = subflow.get("child_id")
    parallel = doc.get("parallel")
    if isinstance(parallel, dict):
        facts["parallel"] = {k: parallel.get(k) for k in ("count", "running", "done", "failed")}
        children = parallel.get("children")
        waiting = ""
        if isinstance(children, dict) and children:  # subflow branches: child jobs run them
            ids = [
                c.get("child_id") for _, c in sorted(children.items(), key=lambda kv: int(kv[0]))
            ]
            facts["parallel"]["child_job_ids"] = ids
            waiting = f"; {len(ids)} of them wait for their child jobs ({', '.join(ids[:3])}"
            waiting += ", ...)" if len(ids) > 3 else ")"
        parts.insert(
            0,
            f"parallel state `{parallel.get('state')}`: {parallel.get('done')} of "
            f"{parallel.get('count')} branches done{waiting}",
        )
    if not parts:
        parts.append(f"{status} at state `{state}`")
    return "; ".join(parts[:5]) + (f" (and {len(parts) - 5} more)" if len(parts) > 5 else ""), facts


async def _waiting_for_slot(
    orch: Orchestrator, doc: dict[str, Any], slot: dict[str, Any], now: int
) -> tuple[str, dict[str, Any]]:
    """A job in its concurrency key's line: how many hold a slot, and its place."""
    blueprint = await orch.pinned_blueprint(doc)
    running, place, waiting = await orch.slot_counts(slot["tag"], f"{doc['id']}|{slot['round']}")
    since = int(slot.get("since") or now)
    name = describe(blueprint, slot)  # type: ignore[arg-type]  # a SlotBook, as stored
    facts = {
        "concurrency": {
            "key": slot["key"],
            "limit": slot["limit"],
            "running": running,
            "place_in_line": None if place is None else place + 1,
            "in_line": waiting,
            "waiting_ms": now - since,
        }
    }
    sentence = (
        f"waiting for concurrency key {name}: {running} of {slot['limit']} running; "
        f"queued {human(now - since)}"
    )
    if place is not None:
        sentence += f", {place + 1} of {waiting} in line"
    else:  # admitted and about to start, or out of line until its periodic check
        sentence += ", starting"
    return sentence, facts


async def _retrying(
    orch: Orchestrator, doc: dict[str, Any], retry: dict[str, Any], now: int
) -> tuple[str, dict[str, Any]]:
    blueprint = await orch.pinned_blueprint(doc)
    error: dict[str, Any] = {}
    for event in reversed(await orch.history(doc["id"], None) or []):
        if event.get("event") == "task_retry_scheduled" and event.get("state") == retry["state"]:
            error = event.get("error") or {}
            break
    spec_type = task_type_of(blueprint, retry["state"], retry.get("branch"))
    state = blueprint.states.get(retry["state"])
    spec = state.task_spec(retry.get("branch")) if state is not None else None
    of = spec.retry.max_attempts if spec is not None else None
    facts = {
        "task_type": spec_type,
        "attempt": retry["attempt"],
        "max_attempts": of,
        "next_attempt_in_ms": retry["at"] - now,
        "last_error": {"code": error.get("code"), "message": error.get("message")},
    }
    sentence = (
        f"retrying `{retry['state']}` attempt {retry['attempt']}"
        f"{f' of {of}' if of else ''} after {error.get('code', 'an error')} "
        f"{str(error.get('message', ''))[:200]!r}, next attempt in {human(retry['at'] - now)}"
    )
    return sentence, facts


async def explain_job(request: web.Request) -> web.Response:
    job_id = _job_id(request)
    orch = orchestrator(request)
    record = await orch.read(job_id, request[CLIENT])
    if record is None:
        raise job_not_found()
    connected_ms = request.app[SETTINGS].heartbeat_timeout_ms
    sentence, facts = await explain(orch, dict(record.doc), record.leases, connected_ms)
    return json_response(
        {
            "job_id": job_id,
            "status": job_view(record.doc, record.leases)["status"],
            "state": record.doc.get("state"),
            "sentence": sentence,
            "facts": facts,
        }
    )
