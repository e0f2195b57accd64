"""The one wall clock of the engine and the server: Unix time in whole milliseconds.

Job documents, leases, timers and history all count in these; the transition rules never
read it themselves (they are handed `now`), so tests can run them on a fake clock.

`FakeClock.installed()` swaps the clock for the code running in the current context (and
the asyncio tasks it starts): `interlock test` runs the real orchestrator on it, so a
`wait: 2d` passes in no time while a server in another task of the process keeps real time.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from contextvars import ContextVar

_FAKE: ContextVar[FakeClock | None] = ContextVar("interlock_fake_clock", default=None)


def now_ms() -> int:
    """Milliseconds since the Unix epoch, now (the fake clock's, where one is installed)."""
    fake = _FAKE.get()
    if fake is not None:
        return fake.now
    return int(time.time() * 1000)


class FakeClock:
    """A clock that only moves when told to."""

    def __init__(self, start_ms: int) -> None:
        self.now = start_ms  # ms since the epoch

    def advance_to(self, at_ms: int) -> None:
        """Move to `at_ms`; the clock never goes back."""
        self.now = max(self.now, at_ms)

    @contextlib.contextmanager
    def installed(self) -> Iterator[FakeClock]:
        """`now_ms()` reads this clock inside the block (and in tasks created in it)."""
        token = _FAKE.set(self)
        try:
            yield self
        finally:
            _FAKE.reset(token)
