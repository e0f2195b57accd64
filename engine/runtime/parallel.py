"""Parallel states: fan out branches (at most max_concurrency at a time), then join once.

Decides: which branches run (static ones, or one per `for_each` item), what a branch's
final outcome does (`collect` keeps going, `fail_fast` cancels the others and fails the
state), and when the state joins. The join happens in whichever commit settles the last
branch: results are stored by branch index, so their arrival order (and which orchestrator
receives them) does not matter, and the version guard makes sure two results never both
join.

A race (`compete: true`) ends at its first success instead: that commit records the winner,
cancels the other branches (tasks through the workers' cancel path, subflow children as
jobs) and leaves the state, so a second result, decided on the same version at another
orchestrator, fails the version guard and finds its task retired (`superseded`). A failed
branch leaves the others racing; the state fails once every branch has failed.

A branch runs a task, or a subflow: a child job (as a `subflow` state starts one) whose end
settles the branch (`child_done`), found again by the timer if its notification is lost.
"""

from __future__ import annotations

from typing import Any

from engine.blueprint.model import ParallelState, SubflowSpec
from engine.errors import ExpressionError
from engine.runtime import tasks
from engine.runtime.jobdoc import (
    BRANCH_CANCELLED,
    EMPTY_RACE,
    RACE_LOST,
    SUBFLOW_DEPTH,
    TERMINAL,
    UNDECLARED_STATUS,
    BranchChild,
    BranchData,
    ChildJob,
    JobDoc,
    JobStatus,
    NeedBranchData,
    ParallelBook,
    TaskRecord,
)
from engine.runtime.step import Kind, Next, Step
from engine.runtime.waiting import child_depth

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
        if count == 0 and state.compete:
            _forget(step, _book(step))
            message = "a race (compete) over an empty list has no branch to win it"
            step.fail_state(
                state, "failure", {"code": EMPTY_RACE, "state": state.name, "message": message}
            )
            return None
        if isinstance(state.item_spec, SubflowSpec) and count and _too_deep(step):
            # Every item's child would fail so: fail the state once, not each branch (a
            # branch failing at its launch launches the next, which would recurse per item).
            _forget(step, _book(step))
            step.fail_state(state, "failure", _depth_error(step, state))
            return None
        if count == 0:
            return _join(step, state)
        _fill(step, state)
        return None

    def start_child(self, step: Step, state: ParallelState, branch: int) -> None:
        spec = state.branch_spec(branch)
        assert isinstance(spec, SubflowSpec), "a branch without a task runs a subflow"
        if _too_deep(step):  # (a static branch: their number is the blueprint's)
            _failed(step, state, branch, _depth_error(step, state), "failure")
            return
        context = step.context(**self.task_context(step, state, branch))
        try:
            data = (
                spec.input.render(context) if spec.input is not None else step.doc["initial_data"]
            )
        except ExpressionError as exc:
            step.expression_failed(state.name, exc)
            return
        child: BranchChild = {
            "child_id": f"{step.rng.getrandbits(128):032x}",
            "input": data,
            "check_at": step.now + step.settings.subflow_check_ms,
        }
        _book(step).setdefault("children", {})[str(branch)] = child
        step.fx.children.append(_child_job(step.doc, state, branch, child))
        step.event(
            "subflow_started",
            state=state.name,
            branch=_branch_name(step, branch),
            child_job_id=child["child_id"],
            blueprint=spec.blueprint,
        )

    def on_timer(self, step: Step, state: ParallelState, child: JobDoc | None) -> None:
        """Look at the subflow children due a check (read for this change): settle the
        ones that ended, and start again the ones lost before they were written."""
        book = step.doc["parallel"]
        if book is None or book["state"] != state.name:
            return
        for key, entry in sorted(book.get("children", {}).items(), key=lambda kv: int(kv[0])):
            if step.doc["parallel"] is not book or step.ended:
                return  # an earlier child settled the state
            if step.now < entry["check_at"] or entry["child_id"] not in step.children:
                continue
            found = step.children[entry["child_id"]]
            if found is not None and found["status"] in TERMINAL:
                child_done(step, state, int(key), found)
                continue
            entry["check_at"] = step.now + step.settings.subflow_check_ms
            if found is None:  # lost before it was written: start it again, same id
                step.fx.children.append(_child_job(step.doc, state, int(key), entry))

    def due(self, doc: JobDoc) -> list[int]:
        book = doc["parallel"]
        children = book.get("children") if book is not None else None
        return [min(c["check_at"] for c in children.values())] if children else []

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
        _succeeded(step, state, _branch(task), data)

    def gave_up(
        self,
        step: Step,
        state: ParallelState,
        task: TaskRecord,
        error: dict[str, Any],
        trigger: str,
    ) -> None:
        _failed(step, state, _branch(task), error, trigger)


def child_done(step: Step, state: ParallelState, branch: int, child: JobDoc) -> None:
    """A subflow branch's child job ended: the branch succeeds with the child's output, or
    fails with its error (a cancelled child, which nobody here cancelled, fails it too)."""
    book = _book(step)
    del book["children"][str(branch)]
    name = _branch_name(step, branch)
    status = child["status"]
    step.event(
        "subflow_ended", state=state.name, branch=name, child_job_id=child["id"], status=status
    )
    if status == JobStatus.FINISHED:
        _succeeded(step, state, branch, child["result"])
        return
    error: dict[str, Any] = child["error"] or {
        "code": "CHILD_CANCELLED",
        "message": "child cancelled",
    }
    error = {**error, "state": state.name, "child_job_id": child["id"]}
    _failed(step, state, branch, error, "failure")


def _too_deep(step: Step) -> bool:
    return child_depth(step.doc) > step.settings.max_subflow_depth


def _depth_error(step: Step, state: ParallelState) -> dict[str, Any]:
    message = f"subflows nest deeper than {step.settings.max_subflow_depth}"
    return {"code": SUBFLOW_DEPTH, "state": state.name, "message": message}


def child_branch(doc: JobDoc, child_id: str) -> int | None:
    """The branch of the running parallel state whose child job is `child_id`, if any."""
    book = doc["parallel"]
    for key, entry in (book.get("children", {}) if book is not None else {}).items():
        if entry["child_id"] == child_id:
            return int(key)
    return None


def _child_job(doc: JobDoc, state: ParallelState, branch: int, child: BranchChild) -> ChildJob:
    spec = state.branch_spec(branch)
    assert isinstance(spec, SubflowSpec)
    return ChildJob(
        job_id=child["child_id"],
        blueprint=spec.blueprint,
        initial_data=child["input"],
        parent={
            "job_id": doc["id"],
            "state": state.name,
            "depth": child_depth(doc),
            "branch": branch,
        },
    )


def _succeeded(step: Step, state: ParallelState, branch: int, data: Any) -> None:
    """A branch succeeded: its result waits for the join, or, in a race, wins it."""
    if not state.compete:
        _settle(step, state, branch, data)
        return
    book = _book(step)
    book["done"] += 1
    book["running"] -= 1
    name = _branch_name(step, branch)
    step.event("branch_ended", state=state.name, branch=name, done=book["done"], of=book["count"])
    _stop_others(step, state, RACE_LOST)
    step.output(state.name, {"branch": name, "result": data})
    step.event("parallel_won", state=state.name, branch=name, failed=book["failed"])
    _forget(step, book)
    step.follow(state, "success")


def _failed(
    step: Step, state: ParallelState, branch: int, error: dict[str, Any], trigger: str
) -> None:
    """A branch failed for good: under `collect` its error is its result; in a race the
    others race on (the state fails with the last error once all failed); under
    `fail_fast` the others are cancelled and the state fails."""
    book = _book(step)
    error = {**error, "branch": _branch_name(step, branch)}
    if state.on_branch_failure == "collect" and not state.compete:
        book["failed"] += 1
        _settle(step, state, branch, {"error": error})
        return
    if state.compete:
        book["failed"] += 1
        book["done"] += 1
        book["running"] -= 1
        step.event(
            "branch_ended",
            state=state.name,
            branch=error["branch"],
            done=book["done"],
            of=book["count"],
            error=error,
        )
        if book["done"] < book["count"]:
            _fill(step, state)
            return
    else:  # fail_fast: stop the siblings, forget their pending retries, and fail the state.
        _stop_others(step, state, BRANCH_CANCELLED)
    _forget(step, book)
    step.fail_state(state, trigger if state.compete else "failure", error)


def _stop_others(step: Step, state: ParallelState, reason: str) -> None:
    """Cancel the state's running tasks and forget its pending retries (its running
    subflow children are cancelled with the state's book, by `_forget`)."""
    step.cancel_tasks(reason, state=state.name)
    step.doc["retries"] = [r for r in step.doc["retries"] if r["state"] != state.name]


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
    # A race never joins: no result of a branch is ever read back.
    return items, not state.compete and book["done"] >= book["count"] - 1


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
    # One at a time, looking again after each: a launch may settle its own branch (a
    # subflow nested too deep fails at once) and end the state, or fill it in turn.
    while step.doc["parallel"] is book and not step.ended:
        launches = _launches(state, book)
        if not launches:
            return
        book["next"] += 1
        book["running"] += 1
        tasks.launch(step, state, launches[0], 1)


def _join(step: Step, state: ParallelState) -> Next:
    book = _book(step)
    data = step.branch
    if data.run != book["run"] or data.results is None:
        raise NeedBranchData([], results=True)
    own = step.fx.branch_results
    results = [own[k] if k in own else data.results.get(k) for k in range(book["count"])]
    names = book["names"]
    joined: Any = results if names is None else dict(zip(names, results, strict=True))
    step.output(state.name, joined)
    _forget(step, book)
    step.event("parallel_joined", state=state.name, branches=book["count"], failed=book["failed"])
    return "success", state.target("success") or _missing(state)


def _forget(step: Step, book: ParallelBook) -> None:
    """The state is over (joined, or failed fast): drop its stored items and results."""
    fx = step.fx
    fx.branch_items.clear()
    fx.branch_results.clear()
    fx.drop_branches = max(fx.drop_branches, book["count"])
    for child in book.get("children", {}).values():  # subflow branches still running
        fx.cancel_children.append(child["child_id"])
    step.doc["parallel"] = None


def _branch_name(step: Step, branch: int) -> int | str:
    book = step.doc["parallel"]
    names = book["names"] if book is not None else None
    return names[branch] if names else branch


def _missing(state: ParallelState) -> str:
    raise AssertionError(f"the compiler guarantees {state.name}.on.success")
