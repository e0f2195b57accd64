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
    BranchData,
    JobDoc,
    JobStatus,
    NeedBranchData,
    ParallelBook,
    TaskRecord,
)
from engine.runtime.step import Kind, Next, Step

# A for_each without max_concurrency runs this many branches at once. Each branch result
# costs in proportion to the branches in flight (their tasks are in the job document),
# never to the items: a cap keeps a 100,000-item fan-out as cheap per branch as a small one.
FOR_EACH_CONCURRENCY = 100


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
        run = step.doc["transitions"]  # unique to this entry of the state
        step.doc["parallel"] = {
            "state": state.name,
            "run": run,
            "count": count,
            "names": names,
            "next": 0,
            "running": 0,
            "done": 0,
            "failed": 0,
        }
        by_index = dict(enumerate(items)) if items is not None else {}
        step.fx.branch_items.update(by_index)
        step.branch = BranchData(run, by_index, {})
        step.doc["status"] = JobStatus.RUNNING
        step.event("parallel_started", state=state.name, branches=count)
        if count == 0:
            return _join(step, state)
        _fill(step, state)
        return None

    def task_context(self, step: Step, state: ParallelState, branch: int | None) -> dict[str, Any]:
        book = _book(step)
        assert branch is not None
        if book["names"] is None:
            return {"item": _items(step, state, [branch])[branch], "index": branch}
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
        _forget(step, _book(step))
        step.fail_state(state, "failure", error)


def _book(step: Step) -> ParallelBook:
    book = step.doc["parallel"]
    assert book is not None, "a branch exists only while its parallel state runs"
    return book


def _branch(task: TaskRecord) -> int:
    branch = task["branch"]
    assert branch is not None, "a parallel state's tasks are its branches"
    return branch


def upgrade(step: Step) -> None:
    """A parallel state entered before its branch state left the document (its book holds
    `items` and `results`): move them out, as its entry would now, in this change."""
    book: dict[str, Any] = step.doc["parallel"]  # type: ignore[assignment]  # an older shape
    items = book.pop("items", None)
    results = book.pop("results", None) or []
    book["run"] = -1  # no entry since has stored fields: any number no entry uses will do
    by_index = dict(enumerate(items)) if items is not None else {}
    settled = {n: result for n, result in enumerate(results) if result is not None}
    step.fx.branch_items.update(by_index)
    step.fx.branch_results.update(settled)
    step.branch = BranchData(-1, by_index, settled)


def wants(state: ParallelState, doc: JobDoc) -> tuple[list[int], bool]:
    """What of the stored branch state the next change of `doc` may need, to read before
    deciding it: the items of the branches it may launch (the next one, the ones waiting
    for a retry), and every result when the next settled branch may be the last."""
    book = doc["parallel"]
    if book is None or book["state"] != state.name:
        return [], False
    items: list[int] = []
    if book["names"] is None:
        retrying = {r["branch"] for r in doc["retries"] if r["state"] == state.name}
        items = sorted({b for b in retrying if b is not None} | set(_launches(state, book)))
        if not items and book["next"] < book["count"]:
            items = [book["next"]]
    return items, book["done"] >= book["count"] - 1


def _items(step: Step, state: ParallelState, branches: list[int]) -> dict[int, Any]:
    """The items of `branches` (of a for_each), from what the step was given."""
    book = _book(step)
    data = step.branch
    if data.run == book["run"] and all(b in data.items for b in branches):
        return data.items
    wanted, _ = wants(state, step.doc)
    raise NeedBranchData(sorted({*branches, *wanted}), results=False)


def _launches(state: ParallelState, book: ParallelBook) -> range:
    """The branches `_fill` launches now: until max_concurrency run or none are left."""
    limit = state.max_concurrency or (
        FOR_EACH_CONCURRENCY if book["names"] is None else book["count"]
    )
    room = max(0, limit - book["running"])
    return range(book["next"], min(book["count"], book["next"] + room))


def _settle(step: Step, state: ParallelState, branch: int, result: Any) -> None:
    book = _book(step)
    step.fx.branch_results[branch] = result
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
    launches = _launches(state, book)
    if book["names"] is None and launches:
        _items(step, state, list(launches))  # every item at hand before the first launch
    for branch in launches:
        book["next"] += 1
        book["running"] += 1
        tasks.launch(step, state, branch, 1)


def _join(step: Step, state: ParallelState) -> Next:
    book = _book(step)
    data = step.branch
    if data.run != book["run"] or data.results is None:
        raise NeedBranchData([], results=True)
    own = step.fx.branch_results
    results = [own[k] if k in own else data.results.get(k) for k in range(book["count"])]
    names = book["names"]
    joined: Any = results if names is None else dict(zip(names, results, strict=True))
    step.doc["steps"][state.name] = joined
    _forget(step, book)
    step.event("parallel_joined", state=state.name, branches=book["count"], failed=book["failed"])
    return "success", state.target("success") or _missing(state)


def _forget(step: Step, book: ParallelBook) -> None:
    """The state is over (joined, or failed fast): drop its stored items and results."""
    fx = step.fx
    fx.branch_items.clear()
    fx.branch_results.clear()
    fx.drop_branches = max(fx.drop_branches, book["count"])
    step.doc["parallel"] = None


def _branch_name(step: Step, branch: int) -> int | str:
    book = step.doc["parallel"]
    names = book["names"] if book is not None else None
    return names[branch] if names else branch


def _missing(state: ParallelState) -> str:
    raise AssertionError(f"the compiler guarantees {state.name}.on.success")
