"""The orchestrator's side of concurrency keys: runs the key's script and starts the jobs
it admits (the protocol and its crash safety: engine/runtime/concurrency.py).

Every job change here goes through `apply`, so it is guarded like any other; starting an
admitted job and giving back an ended job's slot run as follow-up tasks of their own,
outside the lock of the job whose change triggered them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine
from typing import Any, Protocol

from engine.clock import now_ms
from engine.runtime import concurrency
from engine.runtime.host import Outcome, Rule
from engine.runtime.jobdoc import Effects, Ignored, JobDoc
from engine.runtime.machine import Machine
from engine.store.client import JobRecord, Slot, Store, StoreUnavailable

log = logging.getLogger("interlock.orchestrator")


class SlotHost(Protocol):
    """The part of the orchestrator the slot keeper uses."""

    store: Store

    async def apply(self, job_id: str, rule: Rule, *, gather: bool = False) -> Outcome: ...


class SlotKeeper:
    def __init__(
        self, host: SlotHost, spawn: Callable[[Coroutine[Any, Any, Any]], None], rng: Any
    ) -> None:
        self.host = host
        self.spawn = spawn  # runs a follow-up task (owned and awaited by the orchestrator)
        self.rng = rng

    async def after_commit(self, doc: JobDoc, fx: Effects) -> None:
        """After a job's change landed: give back an ended job's slot, or put a job that
        joined its key's line in line (its `acquire`, before a submission is answered, so
        that a client's submissions are admitted in the order it made them)."""
        book = doc.get("slot")
        if book is None:
            return
        if fx.terminal and book["owed"]:
            self.spawn(self.release(doc["id"], book["tag"], book["round"], book["limit"]))
        elif fx.slot_joined:
            try:
                await self.acquire(doc)
            except StoreUnavailable as exc:  # the job's periodic check tries again
                log.warning("job %s could not join its concurrency key's line: %s", doc["id"], exc)

    async def acquire(self, doc: JobDoc) -> Slot:
        """Put the job in its key's line (or find it there, or admitted) and start whatever
        the key admits."""
        book = doc["slot"]
        previous = f"{doc['id']}|{book['round'] - 1}" if book["round"] > 1 else ""
        member = concurrency.member(doc)
        slot = await self.host.store.slot(
            "acquire", book["tag"], member, book["limit"], previous=previous
        )
        self.start(slot.admitted)
        return slot

    async def release(self, job_id: str, tag: str, round_: int, limit: int) -> None:
        """Give back the slot (or the place in line) of an ended job's round, start the
        jobs next in line, and clear the debt in the job."""
        await self.give_back(job_id, tag, round_, limit)

        async def rule(record: JobRecord, machine: Machine) -> Effects | Ignored:
            return machine.slot_released(record.doc, round_)

        await self.host.apply(job_id, rule)

    async def give_back(self, job_id: str, tag: str, round_: int, limit: int) -> None:
        slot = await self.host.store.slot("release", tag, f"{job_id}|{round_}", limit)
        self.start(slot.admitted)

    def start(self, admitted: list[tuple[str, int]]) -> None:
        for member, n in admitted:
            job_id, _, round_ = member.rpartition("|")
            self.spawn(self.admit(job_id, int(round_), n))

    async def admit(self, job_id: str, round_: int, n: int) -> None:
        """Start a job its key admitted (a job ended or run again meanwhile is left be:
        its own release gives the slot back)."""

        async def rule(record: JobRecord, machine: Machine) -> Effects | Ignored:
            return machine.admit(record.doc, round_, n, now_ms(), self.rng)

        await self.host.apply(job_id, rule)

    async def on_timer(self, doc: JobDoc) -> Effects | Ignored | None:
        """The job's periodic check (called inside its change by the timer loop): give back
        a slot still owed (then the change clears the debt), or run `acquire` again for a
        job still waiting (a crash may have kept it out of line, or admitted and not
        started). None when there is nothing to do."""
        book = doc.get("slot")
        if book is None or now_ms() < book["check_at"]:
            return None
        if book["owed"]:
            await self.give_back(doc["id"], book["tag"], book["round"], book["limit"])
            return concurrency.released(doc, book["round"])
        if book["enter"] is not None:
            await self.acquire(doc)  # the timer rule then sets the next check
        return None
