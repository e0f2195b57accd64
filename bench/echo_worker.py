"""The benchmark worker: serves task type `echo`, which returns its params at once.

    ORCHESTRATOR_URL=http://127.0.0.1:8080 WORKER_TOKEN=... WORKER_ID=echo-1 \\
        MAX_CONCURRENT_TASKS=100 WORKER_POLL_TIMEOUT=1 python -m bench.echo_worker

Built on `worker_sdk` like any user's worker; its settings come from the environment.
"""

from __future__ import annotations

from typing import Any

from worker_sdk import TaskContext, Worker

worker = Worker(worker_type="bench-echo")


@worker.task("echo")
async def echo(params: dict[str, Any], ctx: TaskContext) -> dict[str, Any]:
    return params


if __name__ == "__main__":
    worker.run()
