"""Checks of large request bodies, off the event loop.

Parsing a body (`loads_strict`, which also walks every value) and checking it against a
blueprint's `input_schema` are pure CPU work whose cost grows with the body: up to about a
second for the worst 1 MiB body measured (`python -m bench.hostile_input`), during which
every other client, heartbeat and lease of the orchestrator would wait. A body of at least
`OFF_LOOP_BYTES` is therefore handled on one of `THREADS` threads; smaller ones, the usual
case, stay on the loop, where a thread hop would cost more than the work.

The GIL still lets one thread run Python at a time, but it changes hands every few
milliseconds (`sys.getswitchinterval()`), so the loop is never held for long. At most
`THREADS` bodies are parsed or checked at once; others wait their turn holding only their
raw bytes (at most MAX_BODY_BYTES each, one per connection). The answers are the same on
either path: the same functions run, and their exceptions come back as they were raised.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")

OFF_LOOP_BYTES = 64 << 10
THREADS = 2


class Offload:
    def __init__(self, threads: int = THREADS, off_loop_bytes: int = OFF_LOOP_BYTES) -> None:
        self.off_loop_bytes = off_loop_bytes
        self._threads = threads
        self._executor: ThreadPoolExecutor | None = None
        self._slots: asyncio.Semaphore | None = None

    def start(self) -> None:
        """Start the threads now. Started by the first large body instead, the loop would
        wait for each new thread to run, which takes as long as the GIL's other holder
        keeps it (over a second measured, with another check under way on a busy machine)."""
        if self._executor is not None:
            return
        self._executor = ThreadPoolExecutor(self._threads, "interlock-check")
        self._slots = asyncio.Semaphore(self._threads)
        # The pool starts a thread per task while none is idle: hold each until all exist.
        everyone = threading.Barrier(self._threads)
        for _ in range(self._threads):
            self._executor.submit(everyone.wait, 10)

    async def run(self, size: int, work: Callable[[], T]) -> T:
        """`work()`, on a thread when `size` (the body's bytes) is at least off_loop_bytes."""
        if size < self.off_loop_bytes:
            return work()
        self.start()
        executor, slots = self._executor, self._slots
        assert executor is not None
        assert slots is not None
        async with slots:
            return await asyncio.get_running_loop().run_in_executor(executor, work)

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None
