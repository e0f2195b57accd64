"""`GET /api/v1/workers`: who serves tasks, and how many tasks wait for them.

The web console's workers page needs this and the client API had no such route. Any
authenticated client may read it: it shows worker ids, the task types they registered, their
last heartbeat, the task ids they hold, and queue depths; no job data, no tokens.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from engine.blueprint.model import Blueprint, ParallelState, TaskState
from server.errors import json_response
from server.state import orchestrator
from server.views import iso

#: At most this many workers are listed (most recently seen first), and this many task
#: types counted, so the answer costs bounded time whatever the fleet.
MAX_WORKERS = 500
MAX_TASK_TYPES = 500


def task_types(blueprint: Blueprint) -> set[str]:
    """Every task type a blueprint dispatches (task states and parallel branches)."""
    found: set[str] = set()
    for state in blueprint.states.values():
        if isinstance(state, TaskState):
            found.add(state.spec.task_type)
        elif isinstance(state, ParallelState):
            found.update(spec.task_type for spec in state.task_specs)
    return found


async def list_workers(request: web.Request) -> web.Response:
    orch = orchestrator(request)
    workers = await orch.workers(MAX_WORKERS)
    types: set[str] = set()
    for blueprint in orch.blueprints():
        types |= task_types(blueprint)
    views = [_worker_view(worker_id, reg, alive) for worker_id, reg, alive in workers]
    for view in views:
        types.update(view["task_types"])
    counted = sorted(types)[:MAX_TASK_TYPES]
    depths = await orch.queue_depths(counted)
    served = {t for view in views if view["connected"] for t in view["task_types"]}
    queues = [{"task_type": t, "depth": depths[t], "workers": t in served} for t in counted]
    return json_response({"workers": views, "queues": queues})


def _worker_view(
    worker_id: str, registration: dict[str, Any], alive: dict[str, Any] | None
) -> dict[str, Any]:
    skills = registration.get("skills")
    tasks = alive.get("tasks") if alive else None
    return {
        "id": worker_id,
        "worker_type": registration.get("worker_type") or "",
        "task_types": [s for s in skills if isinstance(s, str)] if isinstance(skills, list) else [],
        "registered_at": iso(registration.get("registered_at")),
        # The heartbeat record expires after HEARTBEAT_TIMEOUT: a worker without one has
        # gone quiet (its tasks are retried) though its registration is still kept.
        "connected": alive is not None,
        "last_heartbeat": iso(alive.get("at")) if alive else None,
        # How many, not which: a task id names its job, and the job may be another client's.
        "tasks_held": len(tasks) if isinstance(tasks, list) else 0,
    }
