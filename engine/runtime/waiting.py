"""Approval and subflow states: the job waits for a person or for a child job."""

from __future__ import annotations

import random
from typing import TYPE_CHECKING, Any

from engine.blueprint.model import ApprovalState, State, SubflowState
from engine.runtime.jobdoc import APPROVAL_TIMEOUT, SUBFLOW_DEPTH, ChildJob, Effects

if TYPE_CHECKING:
    from engine.runtime.machine import Machine


def ask(
    machine: Machine,
    doc: dict[str, Any],
    fx: Effects,
    state: ApprovalState,
    now: int,
    rng: random.Random,
) -> None:
    message = state.message.render(machine.context(doc)) if state.message is not None else None
    doc["approval"] = {
        "state": state.name,
        "decisions": list(state.decisions),
        "message": message,
        "token": f"{rng.getrandbits(192):048x}",
        "timeout_at": now + int(state.timeout * 1000) if state.timeout else None,
        "asked_at": now,
    }
    doc["status"] = "waiting_for_human"
    fx.event(
        now,
        "approval_requested",
        state=state.name,
        decisions=list(state.decisions),
        message=message,
    )


def decide(
    machine: Machine,
    doc: dict[str, Any],
    fx: Effects,
    decision: str,
    now: int,
    rng: random.Random,
    by: str,
) -> None:
    approval = doc["approval"]
    state = machine.bp.states[approval["state"]]
    doc["approval"] = None
    doc["steps"][state.name] = {"decision": decision, "by": by, "at": now}
    fx.event(now, "approval_decided", state=state.name, decision=decision, by=by)
    target = state.target(decision)
    if target is None:  # an approval.timeout without on.timeout cannot compile
        machine.finish(
            doc,
            fx,
            now,
            "failed",
            {
                "code": APPROVAL_TIMEOUT,
                "state": state.name,
                "message": "nobody decided in time",
            },
        )
        return
    machine.move(doc, state, decision, target, now, fx, rng)


def child_job(
    machine: Machine, doc: dict[str, Any], state: State, child_id: str, data: Any
) -> ChildJob:
    assert isinstance(state, SubflowState)
    depth = (doc["parent"] or {}).get("depth", 0) + 1
    return ChildJob(
        job_id=child_id,
        blueprint=state.blueprint,
        initial_data=data,
        parent={"job_id": doc["id"], "state": state.name, "depth": depth},
    )


def start_child(
    machine: Machine,
    doc: dict[str, Any],
    fx: Effects,
    state: SubflowState,
    now: int,
    rng: random.Random,
) -> tuple[str, str] | None:
    depth = (doc["parent"] or {}).get("depth", 0) + 1
    if depth > machine.settings.max_subflow_depth:
        error = {
            "code": SUBFLOW_DEPTH,
            "state": state.name,
            "message": f"subflows nest deeper than {machine.settings.max_subflow_depth}",
        }
        machine.state_failed(doc, fx, state, "failure", error, now, rng)
        return None
    data = (
        state.input.render(machine.context(doc)) if state.input is not None else doc["initial_data"]
    )
    child_id = f"{rng.getrandbits(128):032x}"
    doc["subflow"] = {
        "state": state.name,
        "child_id": child_id,
        "input": data,
        "check_at": now + machine.settings.subflow_check_ms,
    }
    doc["status"] = "waiting"
    fx.children.append(child_job(machine, doc, state, child_id, data))
    fx.event(
        now,
        "subflow_started",
        state=state.name,
        child_job_id=child_id,
        blueprint=state.blueprint,
    )
    return None


def child_done(
    machine: Machine,
    doc: dict[str, Any],
    fx: Effects,
    child: dict[str, Any],
    now: int,
    rng: random.Random,
) -> None:
    subflow = doc["subflow"]
    state = machine.bp.states[subflow["state"]]
    doc["subflow"] = None
    fx.event(
        now, "subflow_ended", state=state.name, child_job_id=child["id"], status=child["status"]
    )
    if child["status"] == "finished":
        machine.record(doc, state.name, child.get("result"))
        machine.move(doc, state, "success", _target(state, "success"), now, fx, rng)
    else:
        error = child.get("error") or {"code": "CHILD_CANCELLED", "message": "child cancelled"}
        machine.state_failed(
            doc, fx, state, "failure", {**error, "child_job_id": child["id"]}, now, rng
        )


def _target(state: State, trigger: str) -> str:
    target = state.target(trigger)
    assert target is not None, "the compiler guarantees this transition"
    return target
