"""Parallel states: fan out branches (at most max_concurrency at a time), then join once.

The join happens in whichever commit records the last branch: results are stored in the
job document by branch index, so their arrival order (and which orchestrator receives
them) does not matter, and the version guard makes sure two results never both "join".
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING, Any

from engine.blueprint.model import ParallelState
from engine.errors import ExpressionError
from engine.runtime import tasks
from engine.runtime.jobdoc import BRANCH_CANCELLED, Effects

if TYPE_CHECKING:
    from engine.runtime.machine import Machine


def fan_out(
    machine: Machine,
    doc: dict[str, Any],
    fx: Effects,
    state: ParallelState,
    now: int,
    rng: random.Random,
) -> tuple[str, str] | None:
    if state.for_each is not None:
        items = state.for_each.search(machine.context(doc))
        if not isinstance(items, list):
            # Name the expression: "gave NoneType" alone does not say which key was missing.
            got = "null (nothing at that path)" if items is None else type(items).__name__
            raise ExpressionError(f"for_each {state.for_each.source!r} gave {got}, not a list")
        names: list[str] | None = None
        count = len(items)
    else:
        items = None
        names = [name for name, _ in state.branches]
        count = len(names)
    doc["parallel"] = {
        "state": state.name,
        "count": count,
        "items": items,
        "names": names,
        "next": 0,
        "running": 0,
        "done": 0,
        "failed": 0,
        "results": [None] * count,
    }
    doc["status"] = "running"
    fx.event(now, "parallel_started", state=state.name, branches=count)
    if count == 0:
        return _join(machine, doc, fx, state, now)
    _fill(machine, doc, fx, state, now)
    return None


def branch_context(machine: Machine, doc: dict[str, Any], branch: int) -> dict[str, Any]:
    par = doc["parallel"]
    if par["items"] is not None:
        return {"item": par["items"][branch], "index": branch}
    return {"item": None, "index": branch, "branch": par["names"][branch]}


def branch_succeeded(
    machine: Machine,
    doc: dict[str, Any],
    fx: Effects,
    task: dict[str, Any],
    data: Any,
    now: int,
    rng: random.Random,
) -> None:
    _settle(machine, doc, fx, task["branch"], data, now, rng)


def branch_failed(
    machine: Machine,
    doc: dict[str, Any],
    fx: Effects,
    task: dict[str, Any],
    error: dict[str, Any],
    now: int,
    rng: random.Random,
) -> None:
    state = machine.bp.states[task["state"]]
    assert isinstance(state, ParallelState)
    branch = task["branch"]
    error = {**error, "branch": _branch_name(doc, branch)}
    if state.on_branch_failure == "collect":
        doc["parallel"]["failed"] += 1
        _settle(machine, doc, fx, branch, {"error": error}, now, rng)
        return
    # fail_fast: stop the siblings, forget pending retries, and fail the state.
    tasks.cancel_all(doc, fx, now, BRANCH_CANCELLED)
    doc["retries"] = [r for r in doc["retries"] if r["state"] != state.name]
    doc["parallel"] = None
    machine.state_failed(doc, fx, state, "failure", error, now, rng)


def _settle(
    machine: Machine,
    doc: dict[str, Any],
    fx: Effects,
    branch: int,
    result: Any,
    now: int,
    rng: random.Random,
) -> None:
    par = doc["parallel"]
    state = machine.bp.states[par["state"]]
    assert isinstance(state, ParallelState)
    par["results"][branch] = result
    par["done"] += 1
    par["running"] -= 1
    fx.event(
        now,
        "branch_ended",
        state=state.name,
        branch=_branch_name(doc, branch),
        done=par["done"],
        of=par["count"],
    )
    if par["done"] == par["count"]:
        following = _join(machine, doc, fx, state, now)
        if following is not None:
            via, target = following
            machine.move(doc, state, via, target, now, fx, rng)
        return
    _fill(machine, doc, fx, state, now)


def _fill(
    machine: Machine, doc: dict[str, Any], fx: Effects, state: ParallelState, now: int
) -> None:
    """Launch branches until max_concurrency are running or none are left."""
    par = doc["parallel"]
    limit = state.max_concurrency or par["count"]
    while par["next"] < par["count"] and par["running"] < limit:
        branch = par["next"]
        par["next"] += 1
        par["running"] += 1
        tasks.launch(machine, doc, fx, state.name, branch, 1, now)


def _join(
    machine: Machine, doc: dict[str, Any], fx: Effects, state: ParallelState, now: int
) -> tuple[str, str]:
    par = doc["parallel"]
    results = par["results"]
    joined: Any = results if par["names"] is None else dict(zip(par["names"], results, strict=True))
    doc["steps"][state.name] = joined
    doc["parallel"] = None
    fx.event(now, "parallel_joined", state=state.name, branches=par["count"], failed=par["failed"])
    target = state.target("success")
    assert target is not None
    return "success", target


def _branch_name(doc: dict[str, Any], branch: int) -> int | str:
    names = doc["parallel"]["names"] if doc.get("parallel") else None
    return names[branch] if names else branch
