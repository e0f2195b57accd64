"""`TaskContext`: what a handler knows about the task it runs, and how it talks back."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable, Coroutine, Mapping
from pathlib import Path
from typing import Any

ProgressSender = Callable[[float, str], Coroutine[Any, Any, None]]


class TaskContext:
    """Passed to every handler as its second argument.

    - `task_id`, `job_id`, `task_type`, `orchestrator` (the URL that issued the task),
      `metadata` (state, attempt and blueprint, as the orchestrator sent them);
    - `payload_dir`: a folder for this task's files, created on first use and removed once
      the result is delivered; files written there can be returned as paths, and are
      uploaded when S3 offloading is on;
    - `cancelled`: True once the orchestrator (or shutdown) cancelled the task; async
      handlers are cancelled for real, sync handlers should check this flag now and then;
    - `await ctx.progress(0.4, "message")` (or `ctx.progress_threadsafe(...)` from a sync
      handler) reports progress; it never raises.
    """

    def __init__(
        self,
        task: Mapping[str, Any],
        orchestrator: str,
        payload_dir: Path,
        send_progress: ProgressSender,
    ) -> None:
        self.task_id: str = str(task["task_id"])
        self.job_id: str = str(task["job_id"])
        self.task_type: str = str(task.get("type", ""))
        raw_metadata = task.get("metadata")
        self.metadata: dict[str, Any] = dict(raw_metadata) if isinstance(raw_metadata, dict) else {}
        self.orchestrator = orchestrator
        self._payload_dir = payload_dir
        self._send_progress = send_progress
        self._cancelled = False
        self._loop = asyncio.get_running_loop()

    def __repr__(self) -> str:
        return f"<TaskContext {self.task_type} task={self.task_id} job={self.job_id}>"

    @property
    def payload_dir(self) -> Path:
        self._payload_dir.mkdir(parents=True, exist_ok=True)
        return self._payload_dir

    @property
    def cancelled(self) -> bool:
        return self._cancelled

    def mark_cancelled(self) -> None:
        self._cancelled = True

    async def progress(self, progress: float, message: str = "") -> None:
        """Report progress from 0.0 to 1.0. Delivery is best effort: a failure to send is
        logged, not raised; a progress outside 0..1 raises ValueError."""
        await self._send_progress(_fraction(progress), str(message))

    def progress_threadsafe(self, progress: float, message: str = "") -> None:
        """`progress()` for sync handlers (which run in a thread): queued, not awaited."""
        value = _fraction(progress)
        asyncio.run_coroutine_threadsafe(self._send_progress(value, str(message)), self._loop)


def _fraction(progress: float) -> float:
    if isinstance(progress, bool) or not isinstance(progress, int | float):
        raise TypeError(f"progress must be a number from 0 to 1, not {progress!r}")
    if not math.isfinite(progress) or not 0.0 <= progress <= 1.0:
        raise ValueError(f"progress must be a number from 0 to 1, not {progress!r}")
    return float(progress)
