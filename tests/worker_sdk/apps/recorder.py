"""A worker process for process-level tests, built on the SDK like any worker.

It serves every task type in APP_SKILLS (comma separated, default `echo`): each task sleeps
APP_DELAY seconds, then answers its params plus `served_by` (the orchestrator that issued
it). When APP_RECORD names a file, it appends `start <task_id> <url>` and `end <task_id>
<url>` lines to it, so a test can tell which tasks ran, where, and how often.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from worker_sdk import TaskContext, Worker

DELAY = float(os.environ.get("APP_DELAY", "0"))
RECORD = os.environ.get("APP_RECORD")

worker = Worker(worker_type="recorder")


def record(line: str) -> None:
    if RECORD:
        with open(RECORD, "a") as sink:  # O_APPEND: concurrent short lines never interleave
            sink.write(line + "\n")


async def handle(params: dict[str, Any], ctx: TaskContext) -> dict[str, Any]:
    record(f"start {ctx.task_id} {ctx.orchestrator}")
    await asyncio.sleep(DELAY)
    record(f"end {ctx.task_id} {ctx.orchestrator}")
    return {**params, "served_by": ctx.orchestrator}


for skill in os.environ.get("APP_SKILLS", "echo").split(","):
    worker.task(skill)(handle)

if __name__ == "__main__":
    worker.run()
