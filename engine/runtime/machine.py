"""The transition rules' entry points: (job document, event) -> effects, or why ignored.

Decides only whether an event applies to the job as it stands (a result from the worker
holding the task, a decision for a pending approval, ...); what it then does is up to the
state kinds (`engine/runtime/kinds.py`) through a `Step`. Nothing here touches Redis or
the network: the orchestrator reads a job, calls one entry point and commits the returned
effects in one guarded script. `rng` must be a `random.SystemRandom` where its output is
a secret (approval tokens, child job ids).
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping
from typing import Any

from engine.blueprint.model import Blueprint, ListenState, ParallelState
from engine.runtime import concurrency, events, parallel, pausing, redrive, tasks, waiting
from engine.runtime.jobdoc import (
    JOB_TIMEOUT,
    TERMINAL,
    BranchData,
    Effects,
    Ignored,
    JobDoc,
    JobStatus,
    Leases,
    RuntimeSettings,
)
from engine.runtime.kinds import KINDS
from engine.runtime.step import Step

# For entry points that draw nothing at random (cancel); never seeded, so never guessable.
_SYSTEM_RNG = random.SystemRandom()


class Machine:
    """Applies one blueprint's rules to job documents."""

    def __init__(self, blueprint: Blueprint, settings: RuntimeSettings) -> None:
        self.bp = blueprint
        self.settings = settings

    def step(
        self,
        doc: JobDoc,
        now: int,
        rng: random.Random,
        leases: Leases | None = None,
        branch: BranchData | None = None,
    ) -> Step:
        """A change of `doc` at `now`, collecting its effects. `branch`: what was read of a
        parallel state's stored branch state (see engine/runtime/parallel.py)."""
        fx = Effects(leases=leases if leases is not None else {})
        step = Step(
            bp=self.bp,
            settings=self.settings,
            kinds=KINDS,
            doc=doc,
            fx=fx,
            now=now,
            rng=rng,
            branch=branch,
        )
        if doc["parallel"] is not None and "run" not in doc["parallel"]:
            parallel.upgrade(step)  # written by an earlier version of the engine
        return step

    def branch_wants(self, doc: JobDoc) -> tuple[list[int], bool]:
        """The stored branch items (indexes) and whether every result, that the job's next
        change may need: worth reading along with the job (see parallel.wants)."""
        book = doc["parallel"]
        if book is None:
            return [], False
        state = self.bp.states[book["state"]]
        assert isinstance(state, ParallelState)
        return parallel.wants(state, doc)

    # -- entry points ----------------------------------------------------------------------

    def start(self, doc: JobDoc, now: int, rng: random.Random) -> Effects:
        step = self.step(doc, now, rng)
        step.event("job_created", state=self.bp.start)
        if self.bp.concurrency is not None:  # it waits for a slot of its key first
            concurrency.hold(step, self.bp.start)
        else:
            step.enter(self.bp.start)
        return step.fx

    def admit(
        self, doc: JobDoc, round_: int, n: int, now: int, rng: random.Random
    ) -> Effects | Ignored:
        """The job's concurrency key admitted it (engine/runtime/concurrency.py)."""
        return concurrency.admit(self.step(doc, now, rng), round_, n)

    def slot_released(self, doc: JobDoc, round_: int) -> Effects | Ignored:
        """The ended job's concurrency slot was given back."""
        return concurrency.released(doc, round_)

    def on_result(
        self,
        doc: JobDoc,
        leases: Leases,
        result: dict[str, Any],
        now: int,
        rng: random.Random,
        branch: BranchData | None = None,
        checked: tasks.Checked | None = None,
    ) -> Effects | Ignored:
        """A worker's answer (`task_id`, `worker_id`, `status`, `data`, `error`); `checked`:
        its data's output_schema check, when it was done ahead (`output_schema_of`)."""
        fx, (refused,) = self.on_results(doc, leases, [result], now, rng, branch, [checked])
        return refused or fx or Ignored("stale_task")

    def on_results(
        self,
        doc: JobDoc,
        leases: Leases,
        results: list[dict[str, Any]],
        now: int,
        rng: random.Random,
        branch: BranchData | None = None,
        checks: list[tasks.Checked | None] | None = None,
    ) -> tuple[Effects | None, list[Ignored | None]]:
        """Several answers for the job's tasks as one change, in order (the branch results
        of a wide parallel state that arrived together): the change (None when every one was
        ignored), and for each answer why it was ignored, or None."""
        step: Step | None = None
        refused: list[Ignored | None] = []
        for n, result in enumerate(results):
            why = _refused(doc, leases, result)
            refused.append(why)
            if why is None:
                step = step or self.step(doc, now, rng, leases, branch)
                self._answer(step, result, checks[n] if checks else None)
        return (step.fx if step is not None else None), refused

    @staticmethod
    def _answer(step: Step, result: dict[str, Any], checked: tasks.Checked | None) -> None:
        """Apply an answer `_refused` let through."""
        task_id = str(result.get("task_id", ""))
        lease = step.fx.leases[task_id]
        now, worker = step.now, lease.worker
        task = step.retire(task_id)
        status = str(result.get("status") or "success")
        step.fx.history.append(tasks.picked_up(task, lease))
        step.task_event(
            "task_result",
            task,
            worker=worker,
            status=status,
            duration_ms=max(0, now - lease.leased_at),
            error=result.get("error") or None,
        )
        tasks.answered(step, task, status, result.get("data"), result.get("error"), checked)

    def output_schema_of(self, doc: JobDoc, result: dict[str, Any]) -> Any:
        """The output_schema a success `result` for one of the job's tasks is checked
        against, or None (no schema, not a success, no such task)."""
        task = doc["tasks"].get(str(result.get("task_id", "")))
        if task is None or str(result.get("status") or "success") != "success":
            return None
        spec = self.bp.states[task["state"]].task_spec(task["branch"])
        return spec.output_schema if spec is not None else None

    def on_timer(
        self,
        doc: JobDoc,
        leases: Leases,
        now: int,
        rng: random.Random,
        alive: dict[str, dict[str, Any] | None],
        child: JobDoc | None,
        heard_since: int = 0,
        branch: BranchData | None = None,
        children: Mapping[str, JobDoc | None] | None = None,
    ) -> Effects | None:
        """Handle whatever has fallen due; None when the job has ended.

        `alive` maps the workers holding this job's tasks to their last heartbeat (None when
        gone); `child` is the subflow child's document when the job waits for one;
        `heard_since` is when the deployment could hear workers again after an outage (a
        worker's silence before it does not count); `children` are the child jobs of a
        parallel state's subflow branches whose check is due (`child_checks`), by id (None:
        not found)."""
        if doc["status"] in TERMINAL:
            return None
        step = self.step(doc, now, rng, leases, branch)
        step.children = children or {}
        deadline = doc["deadline"] if doc.get("paused") is None else None  # waits for resume
        if deadline is not None and now >= deadline:
            message = "the job did not end within its result_timeout"
            error = {"code": JOB_TIMEOUT, "message": message, "state": doc["state"]}
            step.abort(JobStatus.FAILED, error)
            return step.fx
        tasks.fire_retries(step)
        tasks.check_leases(step, alive, heard_since)
        concurrency.recheck(step)
        if not step.ended and doc["state"] is not None:
            state = step.state(doc["state"])
            step.rules(state).on_timer(step, state, child)
        return step.fx

    def on_decision(
        self, doc: JobDoc, decision: str, now: int, rng: random.Random, by: str
    ) -> Effects | Ignored:
        approval = doc["approval"]
        if doc["status"] != JobStatus.WAITING_FOR_HUMAN or approval is None:
            return Ignored("not_waiting_for_approval")
        if decision not in approval["decisions"]:
            return Ignored("unknown_decision")
        step = self.step(doc, now, rng)
        if waiting.timed_out(step):
            # Too late: the timeout has won though its timer has not run yet (it is due, and
            # will). Answer exactly as once it has.
            return Ignored("not_waiting_for_approval")
        waiting.decide(step, decision, by=by)
        return step.fx

    def on_event(
        self,
        doc: JobDoc,
        name: str,
        payload: Any,
        now: int,
        rng: random.Random,
        checked: str | None = None,
    ) -> Effects | Ignored:
        """An event sent to the job: taken by the listen state waiting for `name`, else
        ignored (`not_listening`, or `invalid_payload` when it breaks the state's schema).
        `checked`: the state whose schema the payload was already checked against."""
        book = events.listening(doc, now) if doc["status"] not in TERMINAL else None
        if book is None or book["event"] != name:
            return Ignored("not_listening")
        state = self.bp.states[book["state"]]
        assert isinstance(state, ListenState)
        if checked != state.name and events.payload_problems(state, payload):
            return Ignored("invalid_payload")
        step = self.step(doc, now, rng)
        events.receive(step, book, payload)
        return step.fx

    def on_child_done(
        self,
        doc: JobDoc,
        child: JobDoc,
        now: int,
        rng: random.Random,
        branch: BranchData | None = None,
        leases: Leases | None = None,
    ) -> Effects | Ignored:
        """A child job ended: the subflow state's, or a parallel state's subflow branch's
        (`branch`: what was read of the parallel state's stored branch state; `leases`:
        the job's, for a race this end wins, which cancels the other branches' tasks)."""
        subflow = doc["subflow"]
        ours = subflow is not None and subflow["child_id"] == child["id"]
        in_branch = None if ours else parallel.child_branch(doc, child["id"])
        if doc["status"] in TERMINAL or (not ours and in_branch is None):
            return Ignored("not_waiting_for_this_child")
        if child["status"] not in TERMINAL:
            return Ignored("child_not_finished")
        step = self.step(doc, now, rng, leases, branch)
        if in_branch is None:
            waiting.child_done(step, child)
            return step.fx
        book = doc["parallel"]
        assert book is not None, "child_branch found the child in it"
        state = self.bp.states[book["state"]]
        assert isinstance(state, ParallelState)
        parallel.child_done(step, state, in_branch, child)
        return step.fx

    def on_progress(
        self, doc: JobDoc, leases: Leases, worker: str, task_id: str, payload: Any, now: int
    ) -> Effects | Ignored:
        """A progress event from the worker holding the task: kept on the job and in history."""
        task = doc["tasks"].get(task_id)
        lease = leases.get(task_id)
        if doc["status"] in TERMINAL or task is None:
            return Ignored("stale_task")
        if lease is None or lease.state != "leased" or lease.worker != worker:
            return Ignored("worker_mismatch")
        step = self.step(doc, now, _SYSTEM_RNG)
        details = payload if isinstance(payload, dict) else {"value": payload}
        doc["progress"] = {"at": now, "state": task["state"], "task_id": task_id, **details}
        step.event(
            "task_progress",
            state=task["state"],
            task_id=task_id,
            worker=worker,
            progress=details.get("progress"),
            message=details.get("message"),
        )
        return step.fx

    def on_release(
        self,
        doc: JobDoc,
        leases: Leases,
        worker: str,
        task_id: str,
        now: int,
        branch: BranchData | None = None,
    ) -> Effects | Ignored:
        """The worker never received a task leased to it (its poll was gone): queue it again
        at once, as the same attempt."""
        task = doc["tasks"].get(task_id)
        lease = leases.get(task_id)
        if doc["status"] in TERMINAL or task is None:
            return Ignored("stale_task")
        if lease is None or lease.state != "leased" or lease.worker != worker:
            return Ignored("worker_mismatch")
        step = self.step(doc, now, _SYSTEM_RNG, leases, branch)
        step.retire(task_id, answered=False)
        step.task_event("task_released", task, worker=worker)
        tasks.launch(step, step.state(task["state"]), task["branch"], task["attempt"])
        return step.fx

    def cancel(self, doc: JobDoc, leases: Leases, now: int) -> Effects | Ignored:
        if doc["status"] in TERMINAL:
            return Ignored(f"job_{doc['status']}")
        step = self.step(doc, now, _SYSTEM_RNG, leases)
        step.abort(JobStatus.CANCELLED, None)
        return step.fx

    def pause(self, doc: JobDoc, leases: Leases, now: int, by: str) -> Effects | Ignored:
        """A client pauses the job (see engine/runtime/pausing.py)."""
        if doc["status"] in TERMINAL:
            return Ignored(f"job_{doc['status']}")
        if doc.get("paused") is not None:
            return Ignored("already_paused")
        step = self.step(doc, now, _SYSTEM_RNG, leases)
        pausing.pause(step, by)
        return step.fx

    def resume(
        self,
        doc: JobDoc,
        leases: Leases,
        now: int,
        rng: random.Random,
        by: str,
        branch: BranchData | None = None,
    ) -> Effects | Ignored:
        """A client resumes a paused job: it makes the move it held, or goes on (launching
        the branches it held back: `branch` holds their items, as for on_result)."""
        if doc["status"] in TERMINAL:
            return Ignored(f"job_{doc['status']}")
        if doc.get("paused") is None:
            return Ignored("not_paused")
        step = self.step(doc, now, rng, leases, branch)
        pausing.resume(step, by)
        return step.fx

    def redrive(
        self,
        doc: JobDoc,
        leases: Leases,
        now: int,
        rng: random.Random,
        by: str,
        *,
        from_state: str | None = None,
        initial_data: dict[str, Any] | None = None,
    ) -> Effects | Ignored:
        """Run an ended job again (engine/runtime/redrive.py): from the state that failed
        (a redrive, `from_state` None), or from `from_state` (a rerun)."""
        status = doc["status"]
        mode = "redrive" if from_state is None else "rerun"
        if status not in TERMINAL:
            return Ignored("job_not_ended")
        if doc["parent"] is not None:
            return Ignored("subflow_child")
        if doc.get("redrives", 0) >= redrive.MAX_REDRIVES:
            return Ignored("redrive_limit")
        if from_state is None:
            if status == JobStatus.FINISHED:
                return Ignored("job_finished")
            from_state = redrive.redrive_state(doc, self.bp)
            if from_state is None:
                return Ignored("nothing_to_redrive")
        elif from_state not in self.bp.states:
            return Ignored("unknown_state")
        step = self.step(doc, now, rng, leases)
        redrive.revive(step, from_state, mode=mode, by=by, initial_data=initial_data)
        return step.fx

    @staticmethod
    def child_checks(doc: JobDoc, now: int) -> list[str]:
        """The child jobs to read for `on_timer`: the subflow branches' children whose
        periodic check has fallen due."""
        book = doc["parallel"]
        children = book.get("children", {}) if book is not None else {}
        return [c["child_id"] for c in children.values() if now >= c["check_at"]]

    def next_due(
        self, doc: JobDoc, leases: Leases, only: Iterable[str] | None = None
    ) -> int | None:
        """The earliest moment something can happen to this job without outside input;
        with `only`, counting of its active tasks only those (the ones a change started)."""
        if doc["status"] in TERMINAL:
            return min(concurrency.due(doc), default=None)  # a slot still owed back
        due = tasks.next_due(doc, leases, only)
        due.extend(concurrency.due(doc))
        if doc["deadline"] is not None and doc.get("paused") is None:
            due.append(doc["deadline"])
        if doc["state"] is not None:
            due.extend(KINDS[self.bp.states[doc["state"]].kind].due(doc))
        return min(due) if due else None


def _refused(doc: JobDoc, leases: Leases, result: dict[str, Any]) -> Ignored | None:
    """Why a worker's answer changes nothing, or None if it is for an active task it holds."""
    task_id = str(result.get("task_id", ""))
    if doc["status"] in TERMINAL:
        cancelled = doc["status"] == JobStatus.CANCELLED
        return Ignored("job_cancelled" if cancelled else "job_finished")
    if task_id not in doc["tasks"]:
        if task_id in doc.get("taken_back", ()):
            return Ignored("superseded")
        return Ignored("duplicate" if task_id in doc["done_tasks"] else "stale_task")
    lease = leases.get(task_id)
    if lease is None or lease.state != "leased":
        return Ignored("not_leased")
    if lease.worker != str(result.get("worker_id", "")):
        return Ignored("worker_mismatch")
    return None
