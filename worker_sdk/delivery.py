"""Results and progress events on their way back to the orchestrators.

Each result is delivered by its own asyncio task, so one slow or unreachable orchestrator
never holds up the others. A result goes to the orchestrator that issued the task and is
retried, the identical body each time (intake is idempotent), with backoff:

- accepted                                  -> done;
- `{"status":"ignored","reason":...}` or a 4xx other than 408/429 -> definitive: logged, done;
- connection error, timeout, 5xx, 408, 429  -> retried, for as long as the worker runs;
- 413, too large for the orchestrator        -> sent again with its largest values moved to
  S3 when offloading is on (worker_sdk/offload.py); else, or when that cannot fit, replaced
  by a RESULT_TOO_LARGE failure, so that the task fails now rather than at its lease's end.

Every attempt, first or retry, to the issuer or to another orchestrator, goes through that
orchestrator's `ResultBatcher` (worker_sdk/batching.py): results to one orchestrator travel
together in `POST /_worker/tasks/results` (an Interlock extension, docs/rxon-protocol.md
§11), one request in flight at a time. Each result still gets its own answer, so the rules
above hold per result: a failed request counts as a failed attempt for each result in it,
and an item the server answers `ignored` (`invalid_result` included) is definitive for that
result alone. An orchestrator without the batch route gets one request per result.

While the issuer is unreachable the result is also offered to the other orchestrators that
are up. One sharing the issuer's Redis accepts it (or knows it was already taken: any
`ignored` reason but `job_not_found` is definitive too); one that does not know the job
answers `job_not_found`, and the worker keeps retrying the issuer. So a failover neither
loses nor duplicates a result.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from worker_sdk.batching import ResultBatcher
from worker_sdk.connection import (
    Backoff,
    Connection,
    RateLimited,
    Refused,
    ResultAnswer,
    Unavailable,
)
from worker_sdk.errors import RESULT_TOO_LARGE, TaskError
from worker_sdk.offload import ValueStore, encode, offload
from worker_sdk.outcome import error_of

log = logging.getLogger("worker_sdk.results")

QUIET_REASONS = ("duplicate", "job_cancelled", "deadline_exceeded", "job_finished")
FOREIGN = "job_not_found"  # what an orchestrator on another store answers
PROGRESS_TIMEOUT_S = 2.0


class Delivery:
    def __init__(
        self,
        worker_id: str,
        connections: Sequence[Connection],
        retry_initial: float,
        retry_max: float,
        values: ValueStore | None = None,
    ) -> None:
        self.worker_id = worker_id
        self.connections = connections
        self.retry_initial = retry_initial
        self.retry_max = retry_max
        self.values = values  # S3 offloading, for results too large to send (offload.py)
        self._pending: dict[str, asyncio.Task[None]] = {}
        self._batchers = {connection: ResultBatcher(connection) for connection in connections}

    @property
    def pending_task_ids(self) -> list[str]:
        return list(self._pending)

    def submit(
        self, issuer: Connection, body: dict[str, Any], done: Callable[[], Awaitable[None]]
    ) -> None:
        """Deliver `body` in the background; `done()` runs once it is accepted or refused."""
        task_id = str(body["task_id"])

        async def deliver() -> None:
            try:
                await self._deliver(issuer, body)
            finally:
                self._pending.pop(task_id, None)
            await done()

        self._pending[task_id] = asyncio.create_task(deliver(), name=f"result-{task_id}")

    async def drain(self, within_s: float) -> list[str]:
        """Wait up to `within_s` for pending results; cancel and return the ids left."""
        tasks = list(self._pending.values())
        if tasks:
            await asyncio.wait(tasks, timeout=within_s)
        left = list(self._pending)
        for task in list(self._pending.values()):
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)
        for batcher in self._batchers.values():
            await batcher.close()
        return left

    # -- results -----------------------------------------------------------------------------

    async def _deliver(self, issuer: Connection, body: dict[str, Any]) -> None:
        task_id = body["task_id"]
        backoff = Backoff(self.retry_initial, self.retry_max)
        first_failure: float | None = None
        offloaded = False
        while True:
            try:
                answer = await self._send(issuer, body)
            except Refused as exc:
                if exc.status == 413 and body.get("error", {}).get("code") != RESULT_TOO_LARGE:
                    if not offloaded and self.values is not None:
                        offloaded = True
                        smaller = await self._offload(self.values, body, exc)
                        if smaller is not None:
                            body = smaller
                            continue
                    # The same result would be refused again, anywhere: report it instead,
                    # so that the task fails now rather than at its lease's end.
                    log.error("result of task %s too large for %s: %s", task_id, issuer.url, exc)
                    body = too_large(body, exc, offloaded)
                    continue
                log.error(
                    "result of task %s refused by %s (%s); not retried", task_id, issuer.url, exc
                )
                return
            except (Unavailable, RateLimited) as exc:
                if isinstance(exc, Unavailable):
                    issuer.mark_down(f"result delivery failed: {exc}")
                    if await self._fallback(issuer, body):
                        return
                delay = backoff.next()
                if isinstance(exc, RateLimited) and exc.retry_after is not None:
                    delay = max(delay, exc.retry_after)
                if first_failure is None:
                    first_failure = time.monotonic()
                    log.warning(
                        "result of task %s not delivered to %s (%s); retrying until it is",
                        task_id,
                        issuer.url,
                        exc,
                    )
                await asyncio.sleep(delay)
                continue
            _log_answer(task_id, issuer, answer.accepted, answer.reason)
            return

    async def _offload(
        self, values: ValueStore, body: dict[str, Any], refusal: Refused
    ) -> dict[str, Any] | None:
        """`body` with its largest values moved to S3 to fit the limit the 413 named; a
        failure result if an upload failed; None when no choice of values would fit."""
        try:
            moved = await offload(body, refusal.max_bytes, values)
        except TaskError as exc:  # PayloadTransferError: the task failed, maybe for now
            log.error("result of task %s: cannot move values to S3: %s", body["task_id"], exc)
            return {**_without_outcome(body), "status": "failure", "error": error_of(exc)}
        if moved is None:
            return None
        smaller, keys = moved
        log.info(
            "result of task %s too large to send (%s): values %s moved to S3",
            body["task_id"],
            refusal.message,
            ", ".join(repr(key) for key in keys),
        )
        return smaller

    async def _send(self, target: Connection, body: dict[str, Any]) -> ResultAnswer:
        return await self._batchers[target].send(body)

    async def _fallback(self, issuer: Connection, body: dict[str, Any]) -> bool:
        """Offer the result to the other orchestrators that are up; True when one of them
        settled it (accepted, or ignored for a reason only the issuer's store could give)."""
        for other in self.connections:
            if other is issuer or not other.up:
                continue
            try:
                answer = await self._send(other, body)
            except (Unavailable, RateLimited, Refused) as exc:
                log.debug("result of task %s not taken by %s: %s", body["task_id"], other.url, exc)
                continue
            if answer.accepted or answer.reason != FOREIGN:
                log.info(
                    "result of task %s settled through %s while %s is unreachable",
                    body["task_id"],
                    other.url,
                    issuer.url,
                )
                _log_answer(body["task_id"], other, answer.accepted, answer.reason)
                return True
        return False

    # -- progress ----------------------------------------------------------------------------

    async def progress(
        self, issuer: Connection, job_id: str, task_id: str, progress: float, message: str
    ) -> None:
        """Send a progress event, best effort: never raises (but CancelledError)."""
        body = {
            "event_id": str(uuid.uuid4()),
            "event_type": "progress",
            "worker_id": self.worker_id,
            "origin_worker_id": self.worker_id,
            "origin_task_id": task_id,
            "target_job_id": job_id,
            "target_task_id": task_id,
            "payload": {"progress": progress, "message": message},
            "timestamp": int(time.time()),
        }
        others = [c for c in self.connections if c is not issuer and c.up]
        try:
            async with asyncio.timeout(PROGRESS_TIMEOUT_S):  # a handler waits this at most
                for target in (issuer, *others):
                    try:
                        await target.send_event(body)
                        return
                    except Unavailable as exc:
                        log.debug("progress of %s not sent to %s: %s", task_id, target.url, exc)
                    except (Refused, RateLimited) as exc:
                        log.debug("progress of %s refused by %s: %s", task_id, target.url, exc)
                        return
        except TimeoutError:
            log.debug("progress of task %s not sent within %gs", task_id, PROGRESS_TIMEOUT_S)


def too_large(body: dict[str, Any], refusal: Refused, offloaded: bool = False) -> dict[str, Any]:
    """The failure result that replaces `body`, which the orchestrator refused as too large
    (`offloaded`: even once its values were moved to S3, or when no choice of them fits)."""
    size = len(encode(body))
    also = "; moving its values to S3 would not make it fit" if offloaded else ""
    error = {
        "code": RESULT_TOO_LARGE,
        "message": f"the result ({size} bytes of JSON) is too large for the orchestrator: "
        f"{refusal.message}{also}"[:2000],
        "details": {"size_bytes": size, "status": body.get("status")},
    }
    return {**_without_outcome(body), "status": "failure", "error": error}


def _without_outcome(body: dict[str, Any]) -> dict[str, Any]:
    """The result's identity (job, task, worker, costs) without its status, data or error."""
    return {k: v for k, v in body.items() if k not in ("data", "error", "status")}


def _log_answer(task_id: str, target: Connection, accepted: bool, reason: str) -> None:
    if accepted:
        log.debug("result of task %s accepted by %s", task_id, target.url)
    elif reason in QUIET_REASONS:
        log.info("result of task %s ignored by %s: %s", task_id, target.url, reason)
    else:
        log.warning("result of task %s ignored by %s: %s", task_id, target.url, reason)
