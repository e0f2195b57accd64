"""Small asyncio helpers for background loops."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def checkpoint(cause: BaseException | None = None) -> None:
    """Raise CancelledError if this task has been asked to stop.

    Some driver calls (redis-py's pub/sub reads, for one) can absorb a cancellation and
    return or raise their own error instead; a background loop calls this on every turn so
    that a swallowed cancel still stops it.
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError from cause


class Throttle:
    """Log a recurring problem once, then at most every `every_s` seconds (with a count)."""

    def __init__(self, log: logging.Logger, every_s: float = 30.0) -> None:
        self.log = log
        self.every_s = every_s
        self._last: dict[str, float] = {}
        self._skipped: dict[str, int] = {}

    def warning(self, key: str, message: str, *args: object) -> None:
        now = time.monotonic()
        if now - self._last.get(key, -1e9) < self.every_s:
            self._skipped[key] = self._skipped.get(key, 0) + 1
            return
        skipped = self._skipped.pop(key, 0)
        self._last[key] = now
        suffix = f" ({skipped} more since the last report)" if skipped else ""
        self.log.warning(message + suffix, *args)


def run(main: Coroutine[Any, Any, T]) -> T:
    """`asyncio.run(main)` on uvloop where it is installed (it is by `interlock[server]` on
    Linux and macOS): its event loop and transports cost about half the CPU of asyncio's
    for the same HTTP and Redis traffic. Set INTERLOCK_EVENT_LOOP=asyncio to opt out."""
    factory: Callable[[], asyncio.AbstractEventLoop] | None = None
    if os.environ.get("INTERLOCK_EVENT_LOOP", "uvloop") != "asyncio":
        try:
            import uvloop
        except ImportError:
            pass
        else:
            factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main)
