"""Parallel states: fan out branches (at most max_concurrency at a time), then join once.

Decides: which branches run (static ones, or one per `for_each` item), what a branch's
final outcome does (`collect` keeps going, `fail_fast` cancels the others and fails the
state), and when the state joins. The join happens in whichever commit settles the last
branch: results are stored by branch index, so their arrival order (and which orchestrator
receives them) does not matter, and the version guard makes sure two results never both
join.
"""

from __future__ import annotations

from typing import Any

from engine.blueprint.model import ParallelState
from engine.errors import ExpressionError
from engine.runtime import tasks
from engine.runtime.jobdoc import (
    BRANCH_CANCELLED,
    UNDECLARED_STATUS,
    JobStatus,
    ParallelBook,
    TaskRecord,
)
from engine.runtime.step import Kind, Next, Step


class ParallelKind(Kind[ParallelState]):
    def enter(self, step: Step, state: ParallelState) -> Next | None:
        items: list[Any] | None = None
        names: list[str] | None = None
        if state.for_each is not None:
            found = state.for_each.search(step.context())
            if not isinstance(found, list):
                # Name the expression: "gave NoneType" alone does not say which key was missing.
                got = "null (nothing at that path)" if found is None else type(found).__name__
                raise ExpressionError(f"for_each {state.for_each.source!r} gave {got}, not a list")
            items = found
            count = len(items)
        else:
            names = [name for name, _ in state.branches]
            count = len(names)
        step.doc["parallel"] = {
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
        step.doc["status"] = JobStatus.RUNNING
        step.event("parallel_started", state=state.name, branches=count)
        if count == 0:
            return _join(step, state)
        _fill(step, state)
        return None

    def task_context(self, step: Step, state: ParallelState, branch: int | None) -> dict[str, Any]:
        book = _book(step)
        assert branch is not None
        if book["items"] is not None:
            return {"item": book["items"][branch], "index": branch}
        assert book["names"] is not None
        return {"item": None, "index": branch, "branch": book["names"][branch]}

    def task_succeeded(
        self, step: Step, state: ParallelState, task: TaskRecord, status: str, data: Any
    ) -> None:
        if status != "success":
            message = f"parallel branches succeed or fail; got status {status!r}"
            tasks.failed(step, task, UNDECLARED_STATUS, message)
            return
        _settle(step, state, _branch(task), data)

    def gave_up(
        self,
        step: Step,
        state: ParallelState,
        task: TaskRecord,
        error: dict[str, Any],
        trigger: str,
    ) -> None:
        branch = _branch(task)
        error = {**error, "branch": _branch_name(step, branch)}
        if state.on_branch_failure == "collect":
            _book(step)["failed"] += 1
            _settle(step, state, branch, {"error": error})
            return
        # fail_fast: stop the siblings, forget their pending retries, and fail the state.
        step.cancel_tasks(BRANCH_CANCELLED, state=state.name)
        step.doc["retries"] = [r for r in step.doc["retries"] if r["state"] != state.name]
        step.doc["parallel"] = None
        step.fail_state(state, "failure", error)


def _book(step: Step) -> ParallelBook:
    book = step.doc["parallel"]
    assert book is not None, "a branch exists only while its parallel state runs"
    return book


def _branch(task: TaskRecord) -> int:
    branch = task["branch"]
    assert branch is not None, "a parallel state's tasks are its branches"
    return branch


def _settle(step: Step, state: ParallelState, branch: int, result: Any) -> None:
    book = _book(step)
    book["results"][branch] = result
    book["done"] += 1
    book["running"] -= 1
    step.event(
        "branch_ended",
        state=state.name,
        branch=_branch_name(step, branch),
        done=book["done"],
        of=book["count"],
    )
    if book["done"] == book["count"]:
        via, target = _join(step, state)
        step.move(state, via, target)
        return
    _fill(step, state)


def _fill(step: Step, state: ParallelState) -> None:
    """Launch branches until max_concurrency are running or none are left."""
    book = _book(step)
    limit = state.max_concurrency or book["count"]
    while book["next"] < book["count"] and book["running"] < limit:
        branch = book["next"]
        book["next"] += 1
        book["running"] += 1
        tasks.launch(step, state, branch, 1)


def _join(step: Step, state: ParallelState) -> Next:
    book = _book(step)
    results = book["results"]
    names = book["names"]
    joined: Any = results if names is None else dict(zip(names, results, strict=True))
    step.doc["steps"][state.name] = joined
    step.doc["parallel"] = None
    step.event("parallel_joined", state=state.name, branches=book["count"], failed=book["failed"])
    return "success", state.target("success") or _missing(state)


def _branch_name(step: Step, branch: int) -> int | str:
    book = step.doc["parallel"]
    names = book["names"] if book is not None else None
    return names[branch] if names else branch


def _missing(state: ParallelState) -> str:
    raise AssertionError(f"the compiler guarantees {state.name}.on.success")
