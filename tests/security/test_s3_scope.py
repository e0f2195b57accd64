"""Item 7: what a task can make a worker do with its S3 credentials. Uploads come from the
task's own folder only, never through a hard link; downloads only from allowed buckets."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from worker_sdk import S3Config
from worker_sdk.config import WorkerConfig
from worker_sdk.errors import InvalidInputError
from worker_sdk.s3 import PayloadStore


@pytest.fixture
async def store(s3_config: S3Config, tmp_path: Path) -> AsyncIterator[PayloadStore]:
    root = (tmp_path / "payloads").resolve()
    root.mkdir()
    payloads = PayloadStore(s3_config, root)
    await payloads.open()
    yield payloads
    await payloads.close()


def keys(s3: Any, bucket: str) -> list[str]:
    return sorted(o["Key"] for o in s3.list_objects_v2(Bucket=bucket).get("Contents", []))


async def test_a_result_naming_another_tasks_file_is_not_uploaded(
    store: PayloadStore, s3: Any, bucket: str, caplog: pytest.LogCaptureFixture
) -> None:
    # Given another task's downloaded input, and this task's own output
    other = store.root / "job-a-task-1" / "in" / "0"
    other.mkdir(parents=True)
    (other / "contract.pdf").write_text("someone else's input")
    mine = store.root / "job-b-task-2"
    mine.mkdir()
    (mine / "out.txt").write_text("mine")
    # When this task's result names both
    data = {"theirs": str(other / "contract.pdf"), "mine": str(mine / "out.txt")}
    with caplog.at_level(logging.WARNING, logger="worker_sdk.s3"):
        result = await store.upload_result(data, "job-b", mine)
    # Then only its own file is uploaded
    assert result["theirs"] == data["theirs"]
    assert result["mine"] == f"s3://{bucket}/job-b/job-b-task-2/out.txt"
    assert keys(s3, bucket) == ["job-b/job-b-task-2/out.txt"]
    assert "outside the task's folder" in caplog.text


async def test_a_hard_link_to_an_outside_file_is_not_uploaded(
    store: PayloadStore, s3: Any, bucket: str, tmp_path: Path
) -> None:
    secret = tmp_path / "etc-secret"
    secret.write_text("outside")
    task = store.root / "job-c-task-1"
    (task / "out").mkdir(parents=True)
    os.link(secret, task / "linked.txt")
    os.link(secret, task / "out" / "linked-too.txt")
    (task / "out" / "fine.txt").write_text("fine")
    data = {"file": str(task / "linked.txt"), "folder": str(task / "out")}
    result = await store.upload_result(data, "job-c", task)
    assert result["file"] == data["file"]
    assert result["folder"] == f"s3://{bucket}/job-c/job-c-task-1/out/"
    assert keys(s3, bucket) == ["job-c/job-c-task-1/out/fine.txt"]


async def test_downloads_only_from_allowed_buckets(
    s3_config: S3Config, s3: Any, bucket: str, tmp_path: Path
) -> None:
    # Given another tenant's bucket the worker's credentials can read
    other = f"{bucket}-other"
    s3.create_bucket(Bucket=other)
    s3.put_object(Bucket=other, Key="secret.bin", Body=b"tenant data")
    s3.put_object(Bucket=bucket, Key="mine.bin", Body=b"mine")
    config = dataclasses.replace(s3_config, allowed_buckets=frozenset({"inputs"}))
    payloads = PayloadStore(config, await asyncio.to_thread(tmp_path.resolve))
    await payloads.open()
    try:
        # When params name it: refused as invalid input, nothing fetched
        with pytest.raises(InvalidInputError, match="may not read"):
            await payloads.download_params({"x": f"s3://{other}/secret.bin"}, tmp_path / "t")
        assert not await asyncio.to_thread((tmp_path / "t").exists)
        # while the worker's own bucket is always allowed
        local = await payloads.download_params({"x": f"s3://{bucket}/mine.bin"}, tmp_path / "u")
        assert await asyncio.to_thread(Path(local["x"]).read_bytes) == b"mine"
    finally:
        await payloads.close()


def test_s3_allowed_buckets_is_read_from_the_environment() -> None:
    env = {
        "ORCHESTRATOR_URL": "http://127.0.0.1:8080",
        "WORKER_TOKEN": "t",
        "S3_BUCKET": "results",
        "S3_ALLOWED_BUCKETS": "inputs, shared-inputs",
    }
    config = WorkerConfig.from_env(env)
    assert config.s3 is not None
    assert config.s3.allowed_buckets == frozenset({"inputs", "shared-inputs"})
