"""What a client does to a job after it started, besides cancel and approval: send it an
event (a listen state takes it), pause and resume it, redrive or rerun it once ended.

Each control is one guarded change through `apply`, so it holds with any number of
orchestrators, late workers and timers: whoever commits first wins, the others decide
again on the job as it then is. Slow checks (a payload against its schema) run before the
job's lock is taken, against the state the job was read in, and are made again inside the
change only if the job moved on to another state meanwhile.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from engine.blueprint.model import ListenState
from engine.clock import now_ms
from engine.errors import InterlockError
from engine.runtime import events, redrive
from engine.runtime.background import leases_of
from engine.runtime.host import Applied, Outcome, Rule
from engine.runtime.jobdoc import Effects, Ignored
from engine.runtime.machine import Machine
from engine.runtime.registry import Registry
from engine.store.client import JobRecord, Store


class InvalidPayload(InterlockError):
    """An event's payload breaks the schema of the listen state waiting for it."""

    def __init__(self, state: str, problems: list[dict[str, str]]) -> None:
        self.state = state
        self.problems = problems  # each {"path", "message"}, path inside the payload
        first = f"{problems[0]['path']}: {problems[0]['message']}" if problems else "?"
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        super().__init__(f"the payload does not match the schema of state {state!r}: {first}{more}")


class InvalidInput(InterlockError):
    """The initial_data a redrive would run with breaks the blueprint's input_schema."""

    def __init__(self, blueprint: str, problems: list[dict[str, str]]) -> None:
        self.problems = problems  # each {"path", "message"}, path inside initial_data
        first = f"{problems[0]['path']}: {problems[0]['message']}" if problems else "?"
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        super().__init__(
            f"initial_data with the patch applied does not match the input_schema of "
            f"blueprint {blueprint!r}: {first}{more}"
        )


class ControlHost(Protocol):
    """The part of the orchestrator the controls use."""

    store: Store
    registry: Registry

    async def apply(self, job_id: str, rule: Rule) -> Outcome: ...

    async def read(
        self, job_id: str, client: str | None, wait_s: float = 0.0
    ) -> JobRecord | None: ...

    @property
    def rng(self) -> Any: ...


Answer = dict[str, Any] | Ignored | None
"""The job as committed, why nothing changed, or None when the client has no such job."""


def _answer(outcome: Outcome) -> Answer:
    return dict(outcome.doc) if isinstance(outcome, Applied) else outcome


class JobControls:
    def __init__(self, host: ControlHost) -> None:
        self.host = host

    async def _machine(self, doc: Mapping[str, Any]) -> Machine:
        return await self.host.registry.machine(doc["hash"], self.host.store)

    async def send_event(self, job_id: str, client: str, name: str, payload: Any) -> Answer:
        """Deliver the event `name` to the job. Raises InvalidPayload when the listen state
        waiting for it would refuse its payload."""
        record = await self.host.read(job_id, client)
        if record is None:
            return None
        checked = await self._check_payload(record, name, payload)

        async def rule(record: JobRecord, machine: Machine) -> Effects | Ignored:
            return machine.on_event(record.doc, name, payload, now_ms(), self.host.rng, checked)

        outcome = await self.host.apply(job_id, rule)
        if isinstance(outcome, Ignored) and outcome.reason == "invalid_payload":
            # It moved on to another listen state for the same name meanwhile: say why.
            moved = await self.host.read(job_id, client)
            if moved is not None:
                await self._check_payload(moved, name, payload)
        return _answer(outcome)

    async def pause(self, job_id: str, client: str) -> Answer:
        """Pause the job (engine/runtime/pausing.py)."""
        if await self.host.read(job_id, client) is None:
            return None

        async def rule(record: JobRecord, machine: Machine) -> Effects | Ignored:
            by = f"client:{client}"
            return machine.pause(record.doc, leases_of(record), now_ms(), by)

        return _answer(await self.host.apply(job_id, rule))

    async def resume(self, job_id: str, client: str) -> Answer:
        """Resume a paused job."""
        if await self.host.read(job_id, client) is None:
            return None

        async def rule(record: JobRecord, machine: Machine) -> Effects | Ignored:
            by = f"client:{client}"
            leases = leases_of(record)
            return machine.resume(record.doc, leases, now_ms(), self.host.rng, by, record.branch)

        return _answer(await self.host.apply(job_id, rule))

    async def redrive(
        self,
        job_id: str,
        client: str,
        *,
        from_state: str | None = None,
        patch: dict[str, Any] | None = None,
    ) -> Answer:
        """Run an ended job again (engine/runtime/redrive.py): from the state that failed,
        or from `from_state` (a rerun), with `patch` (a JSON Merge Patch) applied to its
        initial_data. Raises InvalidInput when the patched data breaks the input_schema of
        the blueprint version the job runs."""
        if await self.host.read(job_id, client) is None:
            return None
        refused: list[InvalidInput] = []

        async def rule(record: JobRecord, machine: Machine) -> Effects | Ignored:
            data = None
            if patch is not None:
                data = redrive.merge_patch(record.doc["initial_data"], patch)
                problems = events.schema_problems(machine.bp.input_validator, data)
                if problems:
                    refused[:] = [InvalidInput(machine.bp.name, problems)]
                    return Ignored("invalid_input")
            by = f"client:{client}"
            leases = leases_of(record)
            return machine.redrive(
                record.doc,
                leases,
                now_ms(),
                self.host.rng,
                by,
                from_state=from_state,
                initial_data=data,
            )

        outcome = await self.host.apply(job_id, rule)
        if refused and isinstance(outcome, Ignored) and outcome.reason == "invalid_input":
            raise refused[0]
        return _answer(outcome)

    async def _check_payload(self, record: JobRecord, name: str, payload: Any) -> str | None:
        """The listen state whose schema the payload fits (None: the job does not listen
        for `name` now); raises InvalidPayload when it does not fit."""
        book = events.listening(record.doc, now_ms())
        if book is None or book["event"] != name:
            return None
        state = (await self._machine(record.doc)).bp.states[book["state"]]
        assert isinstance(state, ListenState)
        problems = events.payload_problems(state, payload)
        if problems:
            raise InvalidPayload(state.name, problems)
        return state.name
