"""What clients see: job documents, history events and blueprints as API JSON.

The store keeps epoch milliseconds and internal bookkeeping (versions, sequence numbers,
the client name); views show ISO 8601 UTC times and only what a client needs.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from engine.blueprint.model import Blueprint
from engine.runtime.jobdoc import TERMINAL, JobStatus, TaskLease, visible_status


def iso(ms: int | None) -> str | None:
    """Epoch milliseconds as ISO 8601 UTC (`2026-01-31T12:00:00.000Z`)."""
    if ms is None:
        return None
    moment = datetime.fromtimestamp(ms / 1000, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def job_view(
    doc: Mapping[str, Any],
    leases: Mapping[str, str] | None = None,
    task_types: Mapping[tuple[str, int | None], str] | None = None,
    *,
    public_base: str | None = None,
) -> dict[str, Any]:
    """A job as the client API shows it.

    `leases` are the job's raw task leases from the store (queued or leased, by task id);
    `task_types` names the task type of each (state, branch) with a pending retry, since a
    retry entry does not record it. Without them, tasks show as queued and untyped.
    `public_base` (the server's public URL) is given only for views shown to the job's
    owner: it adds the approval link of a job waiting for a person."""
    status = doc["status"]
    view: dict[str, Any] = {
        "id": doc["id"],
        "blueprint": doc["blueprint"],
        "version": doc["version"],
        "status": status,
        "state": doc.get("state"),
        "created_at": iso(doc.get("created_at")),
        "updated_at": iso(doc.get("updated_at")),
        "finished_at": iso(doc.get("finished_at")),
    }
    if status not in TERMINAL:
        tasks = _tasks_view(doc, leases or {}, task_types or {})
        if tasks:
            view["task"] = tasks[0]  # the task of a task state; the first branch of a parallel
            view["tasks"] = tasks
        if status == JobStatus.QUEUED and any(t["status"] == "leased" for t in tasks):
            # A worker took it (leases change in Lua, not in the document).
            view["status"] = JobStatus.RUNNING
        paused = doc.get("paused")
        if isinstance(paused, dict):
            view["status"] = visible_status(doc)
            view["paused"] = {"at": iso(paused.get("at")), "by": paused.get("by")}
            view["paused"]["held"] = paused.get("held")
        view.update(_waiting_view(doc, public_base))
    if doc.get("labels"):
        view["labels"] = doc["labels"]
    slot = doc.get("slot")
    if isinstance(slot, dict):
        view["concurrency"] = _slot_view(slot, status)
    parent = doc.get("parent")
    if isinstance(parent, dict) and parent.get("job_id"):
        view["parent_job_id"] = parent["job_id"]
    progress = doc.get("progress")
    if isinstance(progress, dict):
        view["progress"] = {**progress, "at": iso(progress.get("at"))}
    if status in TERMINAL:
        view["result"] = doc.get("result")
    if status in (JobStatus.FAILED, JobStatus.CANCELLED):
        view["error"] = _error_view(doc.get("error"), status)
    return view


def _slot_view(slot: Mapping[str, Any], status: str) -> dict[str, Any]:
    """A job of a blueprint with `concurrency`: its key, and while it waits for a slot,
    why (`GET /api/v1/jobs/{id}/explain` adds how many hold one and its place in line)."""
    waiting = slot.get("enter") is not None and status not in TERMINAL
    view: dict[str, Any] = {"key": slot.get("key"), "limit": slot.get("limit")}
    view["waiting"] = waiting
    if waiting:
        view["since"] = iso(slot.get("since"))
        view["reason"] = (
            f"waiting for a slot of concurrency key {slot.get('key')}: at most "
            f"{slot.get('limit')} of its jobs run at once"
        )
    else:
        view["admission"] = slot.get("n")
    return view


def _tasks_view(
    doc: Mapping[str, Any],
    leases: Mapping[str, str],
    task_types: Mapping[tuple[str, int | None], str],
) -> list[dict[str, Any]]:
    views: list[dict[str, Any]] = []
    tasks = doc.get("tasks") or {}
    for task_id, task in tasks.items():
        raw = leases.get(task_id)
        lease = TaskLease.decode(raw) if raw is not None else None
        leased = lease is not None and lease.state == "leased"
        view = {
            "id": task_id,
            "type": task["type"],
            "state": task["state"],
            "attempt": task["attempt"],
            "status": "leased" if leased else "queued",
        }
        if lease is not None and leased:
            view["worker"] = lease.worker  # who holds it, since when
            view["leased_at"] = iso(lease.leased_at)
        if task.get("branch") is not None:
            view["branch"] = task["branch"]
        views.append(view)
    for retry in doc.get("retries") or []:
        key = (retry["state"], retry.get("branch"))
        view = {"type": task_types.get(key), "state": retry["state"], "attempt": retry["attempt"]}
        view.update(status="retrying", retry_at=iso(retry["at"]))
        if retry.get("branch") is not None:
            view["branch"] = retry["branch"]
        views.append(view)
    return views


def approval_path(job_id: str, token: str) -> str:
    """The path of a job's single-use approval link (the token is its only credential)."""
    return f"/_public/approvals/{job_id}/{token}"


def _waiting_view(doc: Mapping[str, Any], public_base: str | None) -> dict[str, Any]:
    """What a job that is not running a task waits for: a time, a person, a child job."""
    view: dict[str, Any] = {}
    if doc.get("wait_until") is not None:
        view["wait_until"] = iso(doc["wait_until"])
    approval = doc.get("approval")
    if isinstance(approval, dict):
        # The token only ever appears inside the link, and only in the owner's job view.
        view["approval"] = {
            "state": approval.get("state"),
            "decisions": approval.get("decisions", []),
            "message": approval.get("message"),
            "asked_at": iso(approval.get("asked_at")),
            "timeout_at": iso(approval.get("timeout_at")),
        }
        token = approval.get("token")
        if public_base is not None and isinstance(token, str) and token:
            view["approval"]["link"] = public_base + approval_path(str(doc["id"]), token)
    listen = doc.get("listen")
    if isinstance(listen, dict):
        view["listen"] = {
            "state": listen.get("state"),
            "event": listen.get("event"),
            "since": iso(listen.get("since")),
            "timeout_at": iso(listen.get("timeout_at")),
        }
    subflow = doc.get("subflow")
    if isinstance(subflow, dict):
        view["subflow"] = {"state": subflow.get("state"), "child_job_id": subflow.get("child_id")}
    parallel = doc.get("parallel")
    if isinstance(parallel, dict):
        view["parallel"] = {
            k: parallel.get(k) for k in ("state", "count", "running", "done", "failed")
        }
        children = parallel.get("children")
        if isinstance(children, dict) and children:  # subflow branches whose child runs
            names = parallel.get("names")
            view["parallel"]["children"] = [
                {
                    "branch": names[int(n)] if isinstance(names, list) else int(n),
                    "child_job_id": child.get("child_id"),
                }
                for n, child in sorted(children.items(), key=lambda kv: int(kv[0]))
            ]
    return view


def _error_view(error: Any, status: str) -> dict[str, Any]:
    if not isinstance(error, dict):
        if status == JobStatus.CANCELLED:
            return {"code": "CANCELLED", "message": "the job was cancelled"}
        return {"code": "FAILED", "message": "the job failed"}
    view = {"code": error.get("code"), "message": error.get("message", "")}
    view.update({k: error[k] for k in ("state", "attempt", "details") if k in error})
    return view


def event_view(event: Mapping[str, Any]) -> dict[str, Any]:
    """A history entry: its ISO `timestamp` first, then its fields."""
    return {"timestamp": iso(event.get("at")), **{k: v for k, v in event.items() if k != "at"}}


def blueprint_summary(blueprint: Blueprint) -> dict[str, Any]:
    return {
        "name": blueprint.name,
        "version": blueprint.version,
        "description": blueprint.description,
        "api_endpoint": blueprint.api_endpoint,
        "content_hash": blueprint.content_hash,
    }


def blueprint_detail(blueprint: Blueprint) -> dict[str, Any]:
    states = [
        {
            "name": state.name,
            "kind": state.kind,
            "summary": state.summary,
            "description": state.description,
            "transitions": [{"on": t.trigger, "to": t.target} for t in state.transitions],
        }
        for state in blueprint.states.values()
    ]
    return {
        **blueprint_summary(blueprint),
        "start": blueprint.start,
        "input_schema": plain(blueprint.input_schema),
        "states": states,
    }


def plain(value: Any) -> Any:
    """Mappings and sequences from the YAML loader as plain JSON-able dicts and lists."""
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    return value
