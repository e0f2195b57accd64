"""Results to one orchestrator, sent together: natural batching.

When no request is in flight to the orchestrator, a result goes at once (with any others
handed over in the same turn of the event loop); results arriving while one is in flight
wait for it to end and then go together in the next request, up to MAX_RESULTS_PER_BATCH
results or MAX_BATCH_BYTES of JSON. So a worker finishing one task at a time sends one
request per result, as before, and a busy worker sends a request per round trip rather than
per result, with no timer adding latency to either.

The batcher only carries results; what happens next (retry, fallback, giving up) stays with
the caller (`Delivery`), which gets for each result what `POST /tasks/result` would have
given it: an answer, or the exception of a failed request.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from worker_sdk.connection import Connection, ResultAnswer
from worker_sdk.errors import WorkerError

log = logging.getLogger("worker_sdk.results")

MAX_RESULTS_PER_BATCH = 100  # the server's limit for `POST /tasks/results`
MAX_BATCH_BYTES = 256 * 1024  # well under the server's MAX_BODY_BYTES (1 MiB by default)


@dataclass(eq=False, slots=True)
class _Item:
    encoded: bytes
    future: asyncio.Future[ResultAnswer]


class ResultBatcher:
    """Sends the results handed to `send` to one orchestrator, at most one request at a time."""

    def __init__(self, connection: Connection) -> None:
        self.connection = connection
        self._queue: deque[_Item] = deque()
        self._flushing: asyncio.Task[None] | None = None

    async def send(self, body: Mapping[str, Any]) -> ResultAnswer:
        """Send one result (with whichever others are waiting); its answer, or raises what
        sending it alone would: Unavailable, RateLimited or Refused."""
        # UTF-8, not ASCII escapes: non-ASCII text would grow up to 6 bytes a character.
        encoded = json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()
        item = _Item(encoded, asyncio.get_running_loop().create_future())
        self._queue.append(item)
        if self._flushing is None:
            self._flushing = asyncio.create_task(
                self._flush(), name=f"results to {self.connection.url}"
            )
        # Cancelling the caller cancels the future: a queued item is then skipped, and the
        # answer to one already sent is dropped (the caller gave up on it).
        return await item.future

    async def close(self) -> None:
        """Stop sending; whoever still waits for an answer gets CancelledError."""
        if self._flushing is not None:
            self._flushing.cancel()
            await asyncio.gather(self._flushing, return_exceptions=True)
            self._flushing = None  # also when it was cancelled before it ever ran
        for item in self._queue:
            item.future.cancel()
        self._queue.clear()

    def _take(self) -> list[_Item]:
        batch: list[_Item] = []
        size = 0
        while self._queue and len(batch) < MAX_RESULTS_PER_BATCH:
            item = self._queue[0]
            if item.future.done():  # its sender was cancelled meanwhile
                self._queue.popleft()
                continue
            if batch and size + len(item.encoded) > MAX_BATCH_BYTES:
                break
            batch.append(self._queue.popleft())
            size += len(item.encoded) + 1
        return batch

    async def _flush(self) -> None:
        batch: list[_Item] = []
        try:
            while self._queue:
                batch = self._take()
                if not batch:
                    continue
                try:
                    outcomes = await self.connection.send_results([i.encoded for i in batch])
                except WorkerError as exc:  # the whole request failed: so did each result
                    outcomes = [exc] * len(batch)
                for item, outcome in zip(batch, outcomes, strict=True):
                    if item.future.done():
                        continue
                    if isinstance(outcome, ResultAnswer):
                        item.future.set_result(outcome)
                    else:
                        item.future.set_exception(outcome)
                batch = []
        except BaseException as exc:
            # Cancelled (close) or a bug: nobody may be left waiting for ever.
            for item in (*batch, *self._queue):
                if not item.future.done():
                    if isinstance(exc, asyncio.CancelledError):
                        item.future.cancel()
                    else:
                        item.future.set_exception(exc)
            self._queue.clear()
            raise
        finally:
            # No await since the loop found the queue empty: a result queued from now on
            # starts a new flush.
            self._flushing = None
