"""States that need no worker: set, choice, wait and end.

Decides: what a `set` records, which branch a `choice` takes (or that none held), how long a
`wait` lasts, and what an `end` state leaves as the job's result or error.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from engine.blueprint.model import ChoiceState, EndState, SetState, WaitState
from engine.errors import ExpressionError
from engine.jsonutil import dumps
from engine.runtime.jobdoc import NO_CHOICE_MATCHED, JobDoc, JobStatus
from engine.runtime.step import Kind, Next, Step


class SetKind(Kind[SetState]):
    def enter(self, step: Step, state: SetState) -> Next | None:
        step.record(state.name, state.values.render(step.context()))
        return "next", _target(state, "next")


class ChoiceKind(Kind[ChoiceState]):
    def enter(self, step: Step, state: ChoiceState) -> Next | None:
        context = step.context()
        for index, rule in enumerate(state.rules):
            if rule.when.truthy(context):
                return f"when[{index}]", rule.goto
        if state.otherwise is not None:
            return "otherwise", state.otherwise
        message = f"no condition of choice {state.name!r} held, and it has no otherwise"
        step.finish(
            JobStatus.FAILED, {"code": NO_CHOICE_MATCHED, "state": state.name, "message": message}
        )
        return None


class WaitKind(Kind[WaitState]):
    def enter(self, step: Step, state: WaitState) -> Next | None:
        if state.seconds is not None:
            until = step.now + int(state.seconds * 1000)
        else:
            assert state.until is not None
            until = _parse_time(state.until.render(step.context()))
        if until <= step.now:
            # Already due (`wait: 0`, or a moment past): go on within this same change, with
            # no timer and no second commit.
            return "next", _target(state, "next")
        step.doc["wait_until"] = until
        step.doc["status"] = JobStatus.WAITING
        return None

    def on_timer(self, step: Step, state: WaitState, child: JobDoc | None) -> None:
        until = step.doc["wait_until"]
        if until is not None and step.now >= until:
            step.doc["wait_until"] = None
            step.follow(state, "next")

    def due(self, doc: JobDoc) -> list[int]:
        until = doc["wait_until"]
        return [until] if until is not None else []


class EndKind(Kind[EndState]):
    def enter(self, step: Step, state: EndState) -> Next | None:
        context = step.context()
        doc = step.doc
        output = state.output.render(context) if state.output is not None else doc["state_history"]
        error = None
        if state.outcome == "failed":
            given = state.error.render(context) if state.error is not None else {}
            given = given if isinstance(given, dict) else {}
            error = {
                "code": _text(given.get("code")) or "FAILED",
                "message": _text(given.get("message")) or f"the job ended in state {state.name!r}",
                "state": state.name,
            }
            if given.get("details") is not None:
                error["details"] = given["details"]
        doc["result"] = output
        step.finish(JobStatus(state.outcome), error)
        return None


def _text(value: Any) -> str:
    """An error's code or message as rendered: a string as it is, null as nothing, any
    other value as JSON (a template that gave a number still says something)."""
    if value is None or isinstance(value, str):
        return value or ""
    return dumps(value)


def _target(state: SetState | WaitState, trigger: str) -> str:
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
