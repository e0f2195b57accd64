"""A worker_sdk worker for end-to-end tests: task type `sleep` sleeps `params.seconds` (or
until the file `params.until_file` exists), then returns `{"slept": seconds, "name":
params.name}`; `params.fail` (an error code) fails it instead. It prints `started`, `done`
and `cancelled` lines with the task id, so tests can see which tasks the orchestrator
cancelled.

    ORCHESTRATOR_URL=... WORKER_TOKEN=... WORKER_ID=s1 python -m tests.support.sleep_worker
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from worker_sdk import TaskContext, Worker
from worker_sdk.errors import TaskError

worker = Worker(worker_type="e2e-sleep")


@worker.task("sleep")
async def sleep(params: dict[str, Any], ctx: TaskContext) -> dict[str, Any]:
    seconds = float(params.get("seconds", 0))
    print(f"started {ctx.task_id} {params.get('name')}", flush=True)
    try:
        await asyncio.sleep(seconds)
        if params.get("until_file"):  # the test says when this task may end
            await asyncio.to_thread(_wait_for, Path(params["until_file"]))
    except asyncio.CancelledError:
        print(f"cancelled {ctx.task_id}", flush=True)
        raise
    if params.get("fail"):
        raise TaskError("told to fail", code=str(params["fail"]))
    print(f"done {ctx.task_id}", flush=True)
    return {"slept": seconds, "name": params.get("name")}


def _wait_for(path: Path) -> None:
    while not path.exists():
        time.sleep(0.02)


if __name__ == "__main__":
    worker.run()
