"""Approval and subflow states: the job waits for a person or for a child job.

Decides: what an approval asks and how long it waits, which decision (or the timeout) moves
the job on, how a child job is started and how deep subflows may nest, and what the child's
end means for the parent. A lost `done` notification cannot strand a parent: its timer looks
at the child every `subflow_check_ms` and re-creates a child that was never written.
"""

from __future__ import annotations

from typing import Any

from engine.blueprint.model import ApprovalState, SubflowState
from engine.runtime.jobdoc import (
    APPROVAL_TIMEOUT,
    SUBFLOW_DEPTH,
    TERMINAL,
    ApprovalBook,
    ChildJob,
    JobDoc,
    JobStatus,
    SubflowBook,
)
from engine.runtime.step import Kind, Next, Step


class ApprovalKind(Kind[ApprovalState]):
    def enter(self, step: Step, state: ApprovalState) -> Next | None:
        message = state.message.render(step.context()) if state.message is not None else None
        step.doc["approval"] = {
            "state": state.name,
            "decisions": list(state.decisions),
            "message": message,
            "token": f"{step.rng.getrandbits(192):048x}",
            "timeout_at": step.now + int(state.timeout * 1000) if state.timeout else None,
            "asked_at": step.now,
        }
        step.doc["status"] = JobStatus.WAITING_FOR_HUMAN
        step.event(
            "approval_requested",
            state=state.name,
            decisions=list(state.decisions),
            message=message,
        )
        return None

    def on_timer(self, step: Step, state: ApprovalState, child: JobDoc | None) -> None:
        if timed_out(step):
            decide(step, "timeout", by="timeout")

    def due(self, doc: JobDoc) -> list[int]:
        approval = doc["approval"]
        timeout_at = approval["timeout_at"] if approval is not None else None
        return [timeout_at] if timeout_at is not None else []


def timed_out(step: Step) -> bool:
    """Whether the pending approval's timeout has passed (its timer may not have run yet)."""
    return step.doc["approval"] is not None and pending_approval(step.doc, step.now) is None


def pending_approval(doc: JobDoc, now: int) -> ApprovalBook | None:
    """The approval the job waits for, unless its timeout has passed (then the timeout has
    won, whether or not its timer has run)."""
    approval = doc["approval"]
    if approval is None or (approval["timeout_at"] is not None and now >= approval["timeout_at"]):
        return None
    return approval


def decide(step: Step, decision: str, by: str) -> None:
    """Apply a decision (or `timeout`) to the pending approval."""
    approval = step.doc["approval"]
    assert approval is not None
    state = step.state(approval["state"])
    step.doc["approval"] = None
    step.output(state.name, {"decision": decision, "by": by, "at": step.now})
    step.event("approval_decided", state=state.name, decision=decision, by=by)
    target = state.target(decision)
    if target is None:  # an approval.timeout without on.timeout cannot compile
        error = {"code": APPROVAL_TIMEOUT, "state": state.name, "message": "nobody decided in time"}
        step.finish(JobStatus.FAILED, error)
        return
    step.move(state, decision, target)


class SubflowKind(Kind[SubflowState]):
    def enter(self, step: Step, state: SubflowState) -> Next | None:
        depth = child_depth(step.doc)
        if depth > step.settings.max_subflow_depth:
            message = f"subflows nest deeper than {step.settings.max_subflow_depth}"
            step.fail_state(
                state, "failure", {"code": SUBFLOW_DEPTH, "state": state.name, "message": message}
            )
            return None
        context = step.context()
        data = state.input.render(context) if state.input is not None else step.doc["initial_data"]
        child_id = f"{step.rng.getrandbits(128):032x}"
        book: SubflowBook = {
            "state": state.name,
            "child_id": child_id,
            "input": data,
            "check_at": step.now + step.settings.subflow_check_ms,
        }
        step.doc["subflow"] = book
        step.doc["status"] = JobStatus.WAITING
        step.fx.children.append(_child_job(step.doc, state, book))
        step.event(
            "subflow_started", state=state.name, child_job_id=child_id, blueprint=state.blueprint
        )
        return None

    def on_timer(self, step: Step, state: SubflowState, child: JobDoc | None) -> None:
        book = step.doc["subflow"]
        if book is None or step.now < book["check_at"]:
            return
        if child is not None and child["status"] in TERMINAL:
            child_done(step, child)
            return
        book["check_at"] = step.now + step.settings.subflow_check_ms
        if child is None:  # lost before it was written: start it again, same id
            step.fx.children.append(_child_job(step.doc, state, book))

    def due(self, doc: JobDoc) -> list[int]:
        book = doc["subflow"]
        return [book["check_at"]] if book is not None else []


def child_done(step: Step, child: JobDoc) -> None:
    """The child job ended: go on by `success`, or fail the subflow state."""
    book = step.doc["subflow"]
    assert book is not None
    state = step.state(book["state"])
    step.doc["subflow"] = None
    step.event("subflow_ended", state=state.name, child_job_id=child["id"], status=child["status"])
    if child["status"] == JobStatus.FINISHED:
        step.record(state.name, child["result"])
        step.follow(state, "success")
        return
    error: dict[str, Any] = child["error"] or {
        "code": "CHILD_CANCELLED",
        "message": "child cancelled",
    }
    step.fail_state(state, "failure", {**error, "child_job_id": child["id"]})


def child_depth(doc: JobDoc) -> int:
    """How deep a child of this job would nest (1 for a child of a top-level job)."""
    parent = doc["parent"]
    return (parent["depth"] if parent is not None else 0) + 1


def _child_job(doc: JobDoc, state: SubflowState, book: SubflowBook) -> ChildJob:
    return ChildJob(
        job_id=book["child_id"],
        blueprint=state.blueprint,
        initial_data=book["input"],
        parent={"job_id": doc["id"], "state": state.name, "depth": child_depth(doc)},
    )
