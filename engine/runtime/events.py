"""Listen states: the job waits for a named event that a client sends through the API.

Decides: what a listen state waits for and until when, whether an event applies (the job
listens for that very name, and the timeout has not passed, whether or not its timer has
run), what the payload must look like (the state's `schema`), and where the job goes on
(`on.received`, or `on.timeout`). An event for a job that is not listening for it is
refused, never kept for later: the sender learns at once and may send it again.
"""

from __future__ import annotations

from typing import Any

from jsonschema.protocols import Validator

from engine.blueprint.model import ListenState
from engine.runtime.jobdoc import JobDoc, JobStatus, ListenBook
from engine.runtime.step import Kind, Next, Step

MAX_PROBLEMS = 20  # schema violations reported for one payload, at most


class ListenKind(Kind[ListenState]):
    def enter(self, step: Step, state: ListenState) -> Next | None:
        timeout_at = step.now + int(state.timeout * 1000) if state.timeout else None
        step.doc["listen"] = {
            "state": state.name,
            "event": state.event,
            "since": step.now,
            "timeout_at": timeout_at,
        }
        step.doc["status"] = JobStatus.WAITING
        step.event("event_awaited", state=state.name, name=state.event)
        return None

    def on_timer(self, step: Step, state: ListenState, child: JobDoc | None) -> None:
        book = step.doc.get("listen")
        if book is not None and listening(step.doc, step.now) is None:
            step.doc["listen"] = None
            step.event("event_timeout", state=state.name, name=book["event"])
            step.follow(state, "timeout")

    def due(self, doc: JobDoc) -> list[int]:
        book = doc.get("listen")
        timeout_at = book["timeout_at"] if book is not None else None
        return [timeout_at] if timeout_at is not None else []


def listening(doc: JobDoc, now: int) -> ListenBook | None:
    """What the job listens for, unless its timeout has passed (then the timeout has won,
    whether or not its timer has run)."""
    book = doc.get("listen")
    if book is None or (book["timeout_at"] is not None and now >= book["timeout_at"]):
        return None
    return book


def payload_problems(state: ListenState, payload: Any) -> list[dict[str, str]]:
    """Every way `payload` breaks the state's schema; [] when it fits (or it has none)."""
    return schema_problems(state.schema, payload)


def schema_problems(validator: Validator | None, data: Any) -> list[dict[str, str]]:
    """Every way `data` breaks a schema (at most MAX_PROBLEMS), each with its path inside
    `data`, in path order; [] when it fits or there is no schema."""
    if validator is None:
        return []
    found = []
    for error in validator.iter_errors(data):
        found.append({"path": error.json_path, "message": error.message})
        if len(found) == MAX_PROBLEMS:
            break
    return sorted(found, key=lambda p: (p["path"], p["message"]))


def receive(step: Step, book: ListenBook, payload: Any) -> None:
    """The event the job listens for arrived: record its payload and go on."""
    state = step.state(book["state"])
    step.doc["listen"] = None
    step.record(state.name, payload)
    step.event("event_received", state=state.name, name=book["event"])
    step.follow(state, "received")
