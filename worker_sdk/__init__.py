"""Interlock worker SDK: serve task types to one or several Interlock orchestrators.

    from worker_sdk import Worker

    worker = Worker()  # configuration from the environment, read when it starts

    @worker.task("resize_image", input_schema={"type": "object", "required": ["path"]})
    async def resize(params, ctx):
        await ctx.progress(0.5, "halfway")
        return {"path": params["path"]}

    worker.run()

Install with `pip install 'interlock[worker]'` (add `[worker,s3]` for S3 payload offloading).
This package never imports the server (`server`) or the engine (`engine`).
"""

from worker_sdk.config import OrchestratorConfig, S3Config, WorkerConfig
from worker_sdk.context import TaskContext
from worker_sdk.errors import (
    ConfigError,
    InvalidInputError,
    PayloadTransferError,
    PermanentError,
    TaskError,
    TransientError,
    WorkerError,
)
from worker_sdk.outcome import Result
from worker_sdk.worker import Worker

__all__ = [
    "ConfigError",
    "InvalidInputError",
    "OrchestratorConfig",
    "PayloadTransferError",
    "PermanentError",
    "Result",
    "S3Config",
    "TaskContext",
    "TaskError",
    "TransientError",
    "Worker",
    "WorkerConfig",
    "WorkerError",
]
