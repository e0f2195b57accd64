"""Hooks for watching the engine work: metrics, traces and logs plug in here.

The orchestrator calls an `Observer` at two points of every job change (see
`Orchestrator.commit`): `before_commit` while the new document can still be changed, and
`committed` once Redis has applied the change. A change refused by its version guard is
decided again and reaches `before_commit` again, so observers count only in `committed`.

The default observer does nothing; `Observers` fans out to several. Hooks run on the event
loop inside a commit: they must be quick and must not raise (the orchestrator does not
protect itself against them).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

from engine.runtime.jobdoc import Effects

if TYPE_CHECKING:
    from engine.runtime.machine import Machine

# The document field that records when the job entered its current state (epoch ms): the
# duration of a state spans several commits, and this is where the start is kept.
STATE_SINCE = "state_since"


class Observer(Protocol):
    def before_commit(self, machine: Machine, doc: dict[str, Any], fx: Effects) -> Any:
        """Called before the change is written; may add bookkeeping fields to `doc`.
        Returns a note handed back to `committed` if the change is applied."""

    def committed(self, machine: Machine, doc: dict[str, Any], fx: Effects, note: Any) -> None:
        """Called after Redis applied the change."""


class NoObserver:
    def before_commit(self, machine: Machine, doc: dict[str, Any], fx: Effects) -> Any:
        return None

    def committed(self, machine: Machine, doc: dict[str, Any], fx: Effects, note: Any) -> None:
        return None


class Observers:
    """Several observers as one, called in order."""

    def __init__(self, observers: list[Observer]) -> None:
        self.observers = observers

    def before_commit(self, machine: Machine, doc: dict[str, Any], fx: Effects) -> Any:
        return [o.before_commit(machine, doc, fx) for o in self.observers]

    def committed(self, machine: Machine, doc: dict[str, Any], fx: Effects, note: Any) -> None:
        for observer, own in zip(self.observers, note, strict=True):
            observer.committed(machine, doc, fx, own)


def state_spans_of(
    doc: dict[str, Any], fx: Effects
) -> tuple[list[tuple[str, int, int]], int | None]:
    """The states this change left, as (state, entered ms, left ms), and the entry time of
    the state it ends in; changes nothing. States entered and left in one change are
    included (a zero or near-zero span). A job created before `doc[STATE_SINCE]` existed
    has no entry time: its first state left is skipped."""
    spans: list[tuple[str, int, int]] = []
    since = doc.get(STATE_SINCE)
    for event in fx.history:
        kind = event.get("event")
        if kind == "state_left" and isinstance(since, int) and event.get("state"):
            spans.append((str(event["state"]), since, int(event["at"])))
            since = None
        elif kind == "state_entered":
            since = int(event["at"])
        elif kind in ("job_finished", "job_failed", "job_cancelled"):
            if isinstance(since, int) and doc.get("state"):
                spans.append((str(doc["state"]), since, int(event["at"])))
            since = None
    return spans, since


class StateClock:
    """Records when the job entered its current state in `doc[STATE_SINCE]`. It goes last
    among the observers: the others read the previous entry time (`state_spans_of`)."""

    def before_commit(self, machine: Machine, doc: dict[str, Any], fx: Effects) -> Any:
        doc[STATE_SINCE] = state_spans_of(doc, fx)[1]

    def committed(self, machine: Machine, doc: dict[str, Any], fx: Effects, note: Any) -> None:
        return None
