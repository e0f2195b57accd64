"""The transition rules: pure functions from (job document, event) to (new document, effects).

Nothing here touches Redis or the network. The orchestrator reads a job, calls one entry
point (`start`, `on_result`, `on_timer`, `on_decision`, `on_child_done`, `on_progress`,
`cancel`) and commits the returned effects in one guarded script. `rng` must be a
`random.SystemRandom` where its output is a secret (approval tokens, child job ids).
"""

from __future__ import annotations

import random
from datetime import datetime
from typing import Any

from engine.blueprint.model import (
    ApprovalState,
    Blueprint,
    ChoiceState,
    EndState,
    ParallelState,
    SetState,
    State,
    SubflowState,
    TaskState,
    WaitState,
)
from engine.errors import ExpressionError
from engine.runtime import parallel, tasks, waiting
from engine.runtime.jobdoc import (
    DISPATCH_TIMEOUT,
    EXPRESSION_ERROR,
    INVALID_OUTPUT,
    JOB_TIMEOUT,
    MAX_TRANSITIONS,
    NO_CHOICE_MATCHED,
    TERMINAL,
    TIMEOUT,
    UNDECLARED_STATUS,
    Effects,
    Ignored,
    Leases,
    RuntimeSettings,
)


class Machine:
    """Applies one blueprint's rules to job documents."""

    def __init__(self, blueprint: Blueprint, settings: RuntimeSettings) -> None:
        self.bp = blueprint
        self.settings = settings
        self.max_transitions = blueprint.max_transitions or settings.max_transitions

    # -- entry points ----------------------------------------------------------------------

    def start(self, doc: dict[str, Any], now: int, rng: random.Random) -> Effects:
        fx = Effects()
        fx.event(now, "job_created", state=self.bp.start)
        self.enter(doc, self.bp.start, now, fx, rng)
        return fx

    def on_result(
        self,
        doc: dict[str, Any],
        leases: Leases,
        result: dict[str, Any],
        now: int,
        rng: random.Random,
    ) -> Effects | Ignored:
        task_id = str(result.get("task_id", ""))
        if doc["status"] in TERMINAL:
            return Ignored("job_cancelled" if doc["status"] == "cancelled" else "job_finished")
        if task_id not in doc["tasks"]:
            return Ignored("duplicate" if task_id in doc["done_tasks"] else "stale_task")
        lease = leases.get(task_id)
        worker = str(result.get("worker_id", ""))
        if lease is None or lease.state != "leased":
            return Ignored("not_leased")
        if lease.worker != worker:
            return Ignored("worker_mismatch")
        fx = Effects(leases=leases)
        task = tasks.retire(doc, fx, task_id)
        status = str(result.get("status") or "success")
        data = result.get("data")
        common = {
            "state": task["state"],
            "task_id": task_id,
            "worker": worker,
            "attempt": task["attempt"],
            "branch": task.get("branch"),
        }
        fx.event(
            lease.leased_at,
            "task_picked_up",
            **common,
            waited_ms=max(0, lease.leased_at - task["queued_at"]),
        )
        fx.event(
            now,
            "task_result",
            **common,
            status=status,
            duration_ms=max(0, now - lease.leased_at),
            error=result.get("error") if result.get("error") else None,
        )
        spec = tasks.spec_of(self, task)
        if status == "failure":
            raw = result.get("error")
            error: dict[str, Any] = raw if isinstance(raw, dict) else {}
            tasks.task_failed(
                self,
                doc,
                fx,
                task,
                str(error.get("code") or "TRANSIENT_ERROR"),
                str(error.get("message", "")),
                now,
                rng,
                error.get("details"),
            )
        elif status == "cancelled":
            tasks.task_failed(
                self, doc, fx, task, "TRANSIENT_ERROR", "the worker cancelled the task", now, rng
            )
        elif (
            status == "success"
            and spec.output_schema is not None
            and (
                problems := sorted(spec.output_schema.iter_errors(data), key=lambda e: list(e.path))
            )
        ):
            details = [f"{e.json_path}: {e.message}" for e in problems[:20]]
            tasks.task_failed(
                self,
                doc,
                fx,
                task,
                INVALID_OUTPUT,
                "the result does not match the state's output_schema",
                now,
                rng,
                details,
            )
        elif task.get("branch") is not None:
            if status != "success":
                tasks.task_failed(
                    self,
                    doc,
                    fx,
                    task,
                    UNDECLARED_STATUS,
                    f"parallel branches succeed or fail; got status {status!r}",
                    now,
                    rng,
                )
            else:
                parallel.branch_succeeded(self, doc, fx, task, data, now, rng)
        else:
            state = self.bp.states[task["state"]]
            target = state.target(status)
            if target is None:
                tasks.task_failed(
                    self,
                    doc,
                    fx,
                    task,
                    UNDECLARED_STATUS,
                    f"state {state.name!r} has no transition for status {status!r}",
                    now,
                    rng,
                )
            else:
                self.record(doc, state.name, data)
                self.move(doc, state, status, target, now, fx, rng)
        return fx

    def on_timer(
        self,
        doc: dict[str, Any],
        leases: Leases,
        now: int,
        rng: random.Random,
        alive: dict[str, dict[str, Any] | None],
        child: dict[str, Any] | None,
    ) -> Effects | None:
        """Handle whatever has fallen due; None when nothing has.

        `alive` maps the workers holding this job's tasks to their last heartbeat (None when
        gone); `child` is the subflow child's document when the job waits for one.
        """
        if doc["status"] in TERMINAL:
            return None
        fx = Effects(leases=leases)
        if doc.get("deadline") is not None and now >= doc["deadline"]:
            self.abort(
                doc,
                fx,
                now,
                "failed",
                {
                    "code": JOB_TIMEOUT,
                    "message": "the job did not end within its result_timeout",
                    "state": doc["state"],
                },
            )
            return fx
        for retry in [r for r in doc["retries"] if now >= r["at"]]:
            doc["retries"].remove(retry)
            tasks.launch(self, doc, fx, retry["state"], retry["branch"], retry["attempt"], now)
        for task_id, task in list(doc["tasks"].items()):
            lease = leases.get(task_id)
            if lease is None or doc["status"] in TERMINAL or task_id not in doc["tasks"]:
                continue
            if lease.state == "queued":
                if task.get("dispatch_deadline") is not None and now >= task["dispatch_deadline"]:
                    tasks.retire(doc, fx, task_id)
                    fx.event(
                        now,
                        "task_timeout",
                        state=task["state"],
                        task_id=task_id,
                        attempt=task["attempt"],
                        branch=task.get("branch"),
                        timeout="dispatch",
                    )
                    tasks.task_failed(
                        self,
                        doc,
                        fx,
                        task,
                        DISPATCH_TIMEOUT,
                        "no worker took the task within its dispatch timeout",
                        now,
                        rng,
                    )
                continue
            reason = tasks.lease_problem(task, lease, now, alive.get(lease.worker))
            if reason is None:
                if now >= max(task.get("checked_at") or 0, lease.leased_at) + task["lease_ms"]:
                    task["checked_at"] = now
                continue
            tasks.retire(doc, fx, task_id)
            fx.cancel_on_worker.append((lease.worker, task_id))
            fx.event(
                now,
                "task_timeout",
                state=task["state"],
                task_id=task_id,
                worker=lease.worker,
                attempt=task["attempt"],
                branch=task.get("branch"),
                timeout=reason,
            )
            tasks.task_failed(self, doc, fx, task, TIMEOUT, tasks.TIMEOUT_TEXT[reason], now, rng)
        if doc["status"] in TERMINAL:
            return fx
        if doc.get("wait_until") is not None and now >= doc["wait_until"]:
            state = self.bp.states[doc["state"]]
            doc["wait_until"] = None
            self.move(doc, state, "next", _target(state, "next"), now, fx, rng)
        approval = doc.get("approval")
        if approval and approval.get("timeout_at") is not None and now >= approval["timeout_at"]:
            waiting.decide(self, doc, fx, "timeout", now, rng, by="timeout")
        subflow = doc.get("subflow")
        if subflow and now >= subflow["check_at"]:
            if child is not None and child["status"] in TERMINAL:
                waiting.child_done(self, doc, fx, child, now, rng)
            else:
                subflow["check_at"] = now + self.settings.subflow_check_ms
                if child is None:
                    fx.children.append(
                        waiting.child_job(
                            self,
                            doc,
                            self.bp.states[subflow["state"]],
                            subflow["child_id"],
                            subflow["input"],
                        )
                    )
        return fx

    def on_decision(
        self, doc: dict[str, Any], decision: str, now: int, rng: random.Random, by: str
    ) -> Effects | Ignored:
        approval = doc.get("approval")
        if doc["status"] != "waiting_for_human" or not approval:
            return Ignored("not_waiting_for_approval")
        if decision not in approval["decisions"]:
            return Ignored("unknown_decision")
        if approval.get("timeout_at") is not None and now >= approval["timeout_at"]:
            # Too late: the timer has not run yet, but the timeout has already won.
            fx = Effects()
            waiting.decide(self, doc, fx, "timeout", now, rng, by="timeout")
            return fx
        fx = Effects()
        waiting.decide(self, doc, fx, decision, now, rng, by=by)
        return fx

    def on_child_done(
        self, doc: dict[str, Any], child: dict[str, Any], now: int, rng: random.Random
    ) -> Effects | Ignored:
        subflow = doc.get("subflow")
        if doc["status"] in TERMINAL or not subflow or subflow["child_id"] != child["id"]:
            return Ignored("not_waiting_for_this_child")
        if child["status"] not in TERMINAL:
            return Ignored("child_not_finished")
        fx = Effects()
        waiting.child_done(self, doc, fx, child, now, rng)
        return fx

    def on_progress(
        self,
        doc: dict[str, Any],
        leases: Leases,
        worker: str,
        task_id: str,
        payload: Any,
        now: int,
    ) -> Effects | Ignored:
        """A progress event from the worker holding the task: kept on the job and in history."""
        task = doc["tasks"].get(task_id)
        lease = leases.get(task_id)
        if doc["status"] in TERMINAL or task is None:
            return Ignored("stale_task")
        if lease is None or lease.state != "leased" or lease.worker != worker:
            return Ignored("worker_mismatch")
        fx = Effects()
        details = payload if isinstance(payload, dict) else {"value": payload}
        doc["progress"] = {"at": now, "state": task["state"], "task_id": task_id, **details}
        fx.event(
            now,
            "task_progress",
            state=task["state"],
            task_id=task_id,
            worker=worker,
            progress=details.get("progress"),
            message=details.get("message"),
        )
        return fx

    def on_release(
        self, doc: dict[str, Any], leases: Leases, worker: str, task_id: str, now: int
    ) -> Effects | Ignored:
        """The worker never received a task leased to it (its poll was gone): queue it again
        at once, as the same attempt."""
        task = doc["tasks"].get(task_id)
        lease = leases.get(task_id)
        if doc["status"] in TERMINAL or task is None:
            return Ignored("stale_task")
        if lease is None or lease.state != "leased" or lease.worker != worker:
            return Ignored("worker_mismatch")
        fx = Effects(leases=leases)
        tasks.retire(doc, fx, task_id)
        fx.event(
            now,
            "task_released",
            state=task["state"],
            task_id=task_id,
            worker=worker,
            branch=task.get("branch"),
        )
        tasks.launch(self, doc, fx, task["state"], task.get("branch"), task["attempt"], now)
        return fx

    def cancel(self, doc: dict[str, Any], leases: Leases, now: int) -> Effects | Ignored:
        if doc["status"] in TERMINAL:
            return Ignored(f"job_{doc['status']}")
        fx = Effects(leases=leases)
        self.abort(doc, fx, now, "cancelled", None)
        return fx

    def next_due(self, doc: dict[str, Any], leases: Leases) -> int | None:
        """The earliest moment something can happen to this job without outside input."""
        if doc["status"] in TERMINAL:
            return None
        due = tasks.next_due(doc, leases)
        for moment in (doc.get("deadline"), doc.get("wait_until")):
            if moment is not None:
                due.append(moment)
        if doc.get("approval") and doc["approval"].get("timeout_at") is not None:
            due.append(doc["approval"]["timeout_at"])
        if doc.get("subflow"):
            due.append(doc["subflow"]["check_at"])
        return min(due) if due else None

    # -- moving between states --------------------------------------------------------------

    def context(self, doc: dict[str, Any], **extra: Any) -> dict[str, Any]:
        return {
            "initial_data": doc["initial_data"],
            "state_history": doc["state_history"],
            "steps": doc["steps"],
            "job": {"id": doc["id"], "blueprint": doc["blueprint"], "version": doc["version"]},
            **extra,
        }

    def record(self, doc: dict[str, Any], state: str, data: Any) -> None:
        doc["steps"][state] = data
        if isinstance(data, dict):
            doc["state_history"].update(data)

    def move(
        self,
        doc: dict[str, Any],
        state: State,
        via: str,
        target: str,
        now: int,
        fx: Effects,
        rng: random.Random,
    ) -> None:
        fx.event(now, "state_left", state=state.name, via=via, to=target)
        self.enter(doc, target, now, fx, rng)

    def enter(
        self, doc: dict[str, Any], name: str, now: int, fx: Effects, rng: random.Random
    ) -> None:
        """Move into `name` and on through states that need no outside input."""
        while True:
            doc["transitions"] += 1
            if doc["transitions"] > self.max_transitions:
                self.finish(
                    doc,
                    fx,
                    now,
                    "failed",
                    {
                        "code": MAX_TRANSITIONS,
                        "state": name,
                        "message": f"the job made more than {self.max_transitions} transitions "
                        "(a loop?); raise limits.max_transitions if this is intended",
                    },
                )
                return
            state = self.bp.states[name]
            doc["state"] = name
            fx.event(now, "state_entered", state=name, kind=state.kind)
            try:
                following = self.run_state(doc, state, now, fx, rng)
            except ExpressionError as exc:
                tasks.cancel_all(doc, fx, now, "expression error")
                self.finish(
                    doc,
                    fx,
                    now,
                    "failed",
                    {"code": EXPRESSION_ERROR, "state": name, "message": f"state {name!r}: {exc}"},
                )
                return
            if following is None:
                return
            via, target = following
            fx.event(now, "state_left", state=name, via=via, to=target)
            name = target

    def run_state(
        self, doc: dict[str, Any], state: State, now: int, fx: Effects, rng: random.Random
    ) -> tuple[str, str] | None:
        """Run one state. Returns (trigger, next state) to go on at once, or None when the
        job now waits for something or has ended."""
        if isinstance(state, SetState):
            assert state.values is not None
            self.record(doc, state.name, state.values.render(self.context(doc)))
            return "next", _target(state, "next")
        if isinstance(state, ChoiceState):
            context = self.context(doc)
            for index, rule in enumerate(state.rules):
                if rule.when.truthy(context):
                    return f"when[{index}]", rule.goto
            if state.otherwise is not None:
                return "otherwise", state.otherwise
            self.finish(
                doc,
                fx,
                now,
                "failed",
                {
                    "code": NO_CHOICE_MATCHED,
                    "state": state.name,
                    "message": f"no condition of choice {state.name!r} held, and it has no "
                    "otherwise",
                },
            )
            return None
        if isinstance(state, EndState):
            self.end(doc, fx, state, now)
            return None
        if isinstance(state, TaskState):
            tasks.launch(self, doc, fx, state.name, None, 1, now)
            doc["status"] = "queued"
            return None
        if isinstance(state, WaitState):
            if state.seconds is not None:
                doc["wait_until"] = now + int(state.seconds * 1000)
            else:
                assert state.until is not None
                doc["wait_until"] = _parse_time(state.until.render(self.context(doc)))
            doc["status"] = "waiting"
            return None
        if isinstance(state, ParallelState):
            return parallel.fan_out(self, doc, fx, state, now, rng)
        if isinstance(state, ApprovalState):
            waiting.ask(self, doc, fx, state, now, rng)
            return None
        assert isinstance(state, SubflowState)
        return waiting.start_child(self, doc, fx, state, now, rng)

    def end(self, doc: dict[str, Any], fx: Effects, state: EndState, now: int) -> None:
        context = self.context(doc)
        output = state.output.render(context) if state.output is not None else doc["state_history"]
        error = None
        if state.outcome == "failed":
            given = state.error.render(context) if state.error is not None else {}
            given = given if isinstance(given, dict) else {}
            error = {
                "code": str(given.get("code") or "FAILED"),
                "message": str(given.get("message") or f"the job ended in state {state.name!r}"),
                "state": state.name,
            }
        doc["result"] = output
        self.finish(doc, fx, now, state.outcome, error)

    def finish(
        self, doc: dict[str, Any], fx: Effects, now: int, status: str, error: dict[str, Any] | None
    ) -> None:
        doc["status"] = status
        doc["error"] = error
        doc["finished_at"] = now
        doc["retries"] = []
        doc["wait_until"] = None
        doc["approval"] = None
        doc["parallel"] = None
        fx.terminal = True
        fx.notify_parent = doc.get("parent") is not None
        fx.event(now, f"job_{status}", state=doc["state"], error=error)

    def abort(
        self, doc: dict[str, Any], fx: Effects, now: int, status: str, error: dict[str, Any] | None
    ) -> None:
        """End the job from outside its flow (cancel, job timeout): stop everything running."""
        tasks.cancel_all(doc, fx, now, f"job {status}")
        if doc.get("subflow"):
            fx.cancel_children.append(doc["subflow"]["child_id"])
            doc["subflow"] = None
        self.finish(doc, fx, now, status, error)

    def state_failed(
        self,
        doc: dict[str, Any],
        fx: Effects,
        state: State,
        trigger: str,
        error: dict[str, Any],
        now: int,
        rng: random.Random,
    ) -> None:
        """Follow the state's failure transition, or fail the job with `error`."""
        target = state.target(trigger) or state.target("failure")
        doc["steps"][state.name] = {"error": error}
        if target is None:
            self.finish(doc, fx, now, "failed", error)
        else:
            self.move(doc, state, trigger, target, now, fx, rng)


def _target(state: State, trigger: str) -> str:
    target = state.target(trigger)
    assert target is not None, "the compiler guarantees this transition"
    return target


def _parse_time(value: Any) -> int:
    if not isinstance(value, str):
        raise ExpressionError(f"wait.until gave {value!r}, not an ISO 8601 date-time")
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise ExpressionError(f"wait.until gave {value!r}, not an ISO 8601 date-time") from None
    if moment.tzinfo is None:
        raise ExpressionError(f"wait.until gave {value!r}, which has no timezone")
    return int(moment.timestamp() * 1000)
