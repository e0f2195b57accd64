"""What the orchestrator's background loops rely on: its settings and its API.

`engine/runtime/background.py` takes a `LoopHost` rather than the `Orchestrator` class, so
the loops and the orchestrator that owns them do not import each other.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from engine.blueprint.model import Blueprint
from engine.runtime import webhooks
from engine.runtime.dispatcher import Dispatcher
from engine.runtime.jobdoc import Effects, Ignored, JobDoc
from engine.runtime.machine import Machine
from engine.runtime.ratelimit import RateLimit
from engine.runtime.registry import Registry
from engine.runtime.schedules import Schedule
from engine.store.client import JobRecord, Store


@dataclass(frozen=True, slots=True)
class OrchestratorSettings:
    timer_interval_s: float = 0.1
    timer_batch: int = 200
    timer_claim_ms: int = 30_000
    worker_ttl_ms: int = 24 * 3_600_000  # a registration is forgotten after this silence
    cancel_ttl_ms: int = 3_600_000
    webhook_secret: str = ""
    webhook_claim_ms: int = 60_000
    webhook_batch: int = 100  # deliveries claimed per partition in one turn
    # A job's first webhook is sent by the orchestrator that ended it, which holds the
    # outbox entry this long: if it dies first, any orchestrator sends it after that.
    webhook_direct_ms: int = 15_000
    clients: tuple[str, ...] = ()  # whose job indexes the janitor prunes (janitor.py)
    rate_limits: tuple[RateLimit, ...] = ()  # per task type (engine/runtime/ratelimit.py)


@dataclass(frozen=True, slots=True)
class Applied:
    """A rule's change was committed; `doc` is the job as committed, `leases` its active
    tasks' raw leases as committed."""

    doc: JobDoc
    leases: dict[str, str] = field(default_factory=dict)


Outcome = Applied | Ignored | None
"""What `Orchestrator.apply` did: committed, ignored (with the reason), or no such job."""

Rule = Callable[[JobRecord, Machine], Awaitable[Effects | Ignored]]
"""Decides one change of a job from the job as read (see `Orchestrator.apply`)."""


class LoopHost(Protocol):
    """The part of the orchestrator its background loops use."""

    store: Store
    registry: Registry
    settings: OrchestratorSettings
    dispatcher: Dispatcher
    rng: random.Random
    webhook_sender: webhooks.Sender | None
    webhook_wake: asyncio.Event
    schedules: tuple[Schedule, ...]
    heard_since: int  # when workers could reach the deployment again (start, store back)
    slots: Any  # engine/runtime/slots.py's SlotKeeper (which imports this module)

    async def apply(self, job_id: str, rule: Rule, *, gather: bool = False) -> Outcome: ...

    async def create(
        self, job_id: str, blueprint: Blueprint, initial_data: Any, *, client: str
    ) -> bool: ...

    def job_done(
        self, job_id: str, record: JobRecord | None = None, *, announced: int | None = None
    ) -> None: ...

    def lost_notifications(self) -> None: ...
