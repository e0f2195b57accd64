"""Small asyncio helpers for background loops."""

from __future__ import annotations

import asyncio


def checkpoint(cause: BaseException | None = None) -> None:
    """Raise CancelledError if this task has been asked to stop.

    Some driver calls (redis-py's pub/sub reads, for one) can absorb a cancellation and
    return or raise their own error instead; a background loop calls this on every turn so
    that a swallowed cancel still stops it.
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError from cause
