"""Concurrency keys: at most `limit` jobs of a blueprint with the same key run at once.

A blueprint with `concurrency: {key: "${ initial_data.customer_id }", limit: 2}` gives each
job a key when it is submitted. The jobs of one key span partitions, so the key's state
lives under a hash tag of its own, `{c:<tag>}` (`tag`: a digest of blueprint name and key),
in three keys (engine/store/keys.py): the jobs holding a slot, the line of jobs waiting for
one (FIFO by arrival), and two counters. Every change of them is one script on that slot
(engine/store/lua/slots.lua), and a job's own changes stay one script on its partition's
slot: no script ever touches two slots.

How a job goes, and why a SIGKILL at any point neither leaks a slot nor admits too many:

1. Submit: the job is created `queued`, waiting for a slot (`doc["slot"]`, `SlotBook`), with
   its timer set to a periodic check. Then `acquire` puts `<job id>|<round>` in line and
   admits from the head of the line while fewer than `limit` hold a slot. Admission happens
   only in that script, so the limit holds across orchestrators.
2. A job the script admitted is started by an ordinary guarded job change (`admit`): it
   enters its first state. A crash between the two leaves it admitted but not started;
   a crash between creating the job and `acquire` leaves it out of line. Either is repaired
   by the job's periodic check (`RuntimeSettings.slot_check_ms`), which runs `acquire` again:
   it is idempotent, and answers an admitted job with its admission, so the check starts it.
3. A job that ends (finished, failed, cancelled, also while still in line) gives its slot
   back with `release`, which admits the next in line. The ending commit itself keeps the
   job's timer set (to `finished_at` + the check interval) while the slot is owed; the
   orchestrator releases at once after the commit and then clears the debt, and if it dies
   first the timer fires on any orchestrator, which releases then (`release` is idempotent).
   A slot is thus held from admission until shortly after the end, never less: the limit
   counts jobs that may still run.
4. A redrive or rerun takes a slot again under a new round (`<job id>|<round + 1>`): the
   job waits in line like a new one (it keeps its key), and its `acquire` forgets the
   previous round first, in case that release was still owed.

The two sets never expire (a job may hold its slot for any time; Redis drops a set with its
last member); the counters expire a week after the key's last use.
"""

from __future__ import annotations

import hashlib
from typing import Any

from engine.blueprint.model import Blueprint
from engine.errors import ExpressionError
from engine.runtime.jobdoc import TERMINAL, Effects, Ignored, JobDoc, JobStatus, SlotBook
from engine.runtime.step import Step

MAX_KEY_LENGTH = 200


class ConcurrencyKeyError(ValueError):
    """The blueprint's concurrency key gives no usable value for this job's input."""


def tag(blueprint: str, key: str) -> str:
    """The hash tag of a key's state: a digest, so that any key is a safe tag."""
    return hashlib.sha256(f"{blueprint}\0{key}".encode()).hexdigest()[:24]


def member(doc: JobDoc, book: SlotBook | None = None) -> str:
    book = book or doc["slot"]
    return f"{doc['id']}|{book['round']}"


def key_of(bp: Blueprint, initial_data: Any, job: dict[str, Any]) -> str:
    """The job's key: the rendered template as text. ConcurrencyKeyError when it gives
    anything but a non-empty string or an integer of at most MAX_KEY_LENGTH characters."""
    spec = bp.concurrency
    assert spec is not None
    context = {"initial_data": initial_data, "job": job, "steps": {}, "state_history": {}}
    try:
        value = spec.key.render(context)
    except ExpressionError as exc:
        raise ConcurrencyKeyError(f"concurrency key {spec.source!r}: {exc}") from None
    if isinstance(value, bool) or not isinstance(value, str | int):
        shown = "null (a missing field?)" if value is None else type(value).__name__
        raise ConcurrencyKeyError(
            f"concurrency key {spec.source!r} gave {shown}; it must give a non-empty string "
            "or an integer"
        )
    text = str(value)
    if not text or len(text) > MAX_KEY_LENGTH:
        raise ConcurrencyKeyError(
            f"concurrency key {spec.source!r} gave a string of {len(text)} characters; it "
            f"must have 1 to {MAX_KEY_LENGTH}"
        )
    return text


def describe(bp: Blueprint, book: SlotBook) -> str:
    """`initial_data.customer_id=42`: the key as written (its expression) and its value."""
    spec = bp.concurrency
    written = spec.source if spec is not None else "key"
    inner = written.strip()
    if inner.startswith("${") and inner.endswith("}") and inner.count("${") == 1:
        inner = inner[2:-1].strip()
    return f"{inner}={book['key']}"


# -- the rules (pure: the orchestrator runs the scripts, see engine/runtime/slots.py) ---------


def join_line(doc: JobDoc, bp: Blueprint, enter: str, now: int, check_ms: int) -> SlotBook:
    """The job waits for a slot before it enters `enter` (a new job, or one run again)."""
    spec = bp.concurrency
    assert spec is not None
    before = doc.get("slot")
    if before is not None:
        key, round_ = before["key"], before["round"] + 1
    else:
        key, round_ = key_of(bp, doc["initial_data"], job_context(doc)), 1
    book: SlotBook = {
        "key": key,
        "tag": tag(bp.name, key),
        "limit": spec.limit,
        "round": round_,
        "enter": enter,
        "since": now,
        "check_at": now + check_ms,
        "n": None,
        "owed": False,
    }
    doc["slot"] = book
    doc["status"] = JobStatus.QUEUED
    doc["state"] = None  # (a job run again leaves its last state: nothing of it is due)
    return book


def job_context(doc: JobDoc) -> dict[str, Any]:
    return {"id": doc["id"], "blueprint": doc["blueprint"], "version": doc["version"]}


def waiting(doc: JobDoc) -> bool:
    """Whether the job waits for its slot (in line, or admitted and not started yet)."""
    book = doc.get("slot")
    return book is not None and book["enter"] is not None and not book["owed"]


def owed(doc: JobDoc) -> bool:
    """Whether the job ended and its slot is still to be given back."""
    book = doc.get("slot")
    return book is not None and book["owed"]


def due(doc: JobDoc) -> list[int]:
    """The job's slot check, while it waits or while its release is owed."""
    book = doc.get("slot")
    if book is not None and (book["owed"] or book["enter"] is not None):
        return [book["check_at"]]
    return []


def hold(step: Step, enter: str) -> None:
    """Instead of entering `enter`, the job joins its key's line (the orchestrator then runs
    `acquire`, see engine/runtime/slots.py)."""
    book = join_line(step.doc, step.bp, enter, step.now, step.settings.slot_check_ms)
    step.fx.slot_joined = True
    step.event("concurrency_queued", key=book["key"], limit=book["limit"], round=book["round"])


def admit(step: Step, round_: int, n: int) -> Effects | Ignored:
    """The key's script admitted the job's round `round_` as its `n`-th admission: enter
    the state it waited to enter (held for its resume while the job is paused)."""
    doc = step.doc
    book = doc.get("slot")
    if doc["status"] in TERMINAL:
        return Ignored(f"job_{doc['status']}")
    if book is None or book["round"] != round_ or book["enter"] is None:
        return Ignored("not_waiting_for_slot")
    enter = book["enter"]
    book["enter"] = None
    book["n"] = n
    step.event(
        "concurrency_admitted",
        key=book["key"],
        n=n,
        round=round_,
        waited_ms=step.now - book["since"],
    )
    paused = doc.get("paused")
    if paused is not None:
        paused["held"] = {"enter": enter}
        return step.fx
    doc["status"] = JobStatus.PENDING
    step.enter(enter)
    return step.fx


def released(doc: JobDoc, round_: int) -> Effects | Ignored:
    """The key's script took round `round_`'s slot back: nothing is owed any more."""
    book = doc.get("slot")
    if book is None or book["round"] != round_ or not book["owed"]:
        return Ignored("nothing_owed")
    book["owed"] = False
    return Effects()


def recheck(step: Step) -> None:
    """The job's periodic check while it waits for its slot: look again later."""
    book = step.doc.get("slot")
    if book is not None and book["enter"] is not None and step.now >= book["check_at"]:
        book["check_at"] = step.now + step.settings.slot_check_ms
