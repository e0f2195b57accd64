"""A worker process for the large-payload test: `transform` hashes its input file and
returns a copy of it, both streamed, so the process's own memory stays small."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path
from typing import Any

from worker_sdk import TaskContext, Worker

worker = Worker(worker_type="bigfile")


@worker.task("transform")
def transform(params: dict[str, Any], ctx: TaskContext) -> dict[str, Any]:
    source = Path(params["input"]["source"])
    digest = hashlib.sha256()
    with source.open("rb") as stream:
        while chunk := stream.read(1 << 20):
            digest.update(chunk)
    copy = ctx.payload_dir / "out" / "copy.bin"
    copy.parent.mkdir()
    shutil.copyfile(source, copy)
    return {"sha256": digest.hexdigest(), "size": source.stat().st_size, "copy": str(copy)}


if __name__ == "__main__":
    worker.run()
