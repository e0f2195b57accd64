"""S3 payload offloading through a real orchestrator and a real S3-compatible server."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import re
from pathlib import Path
from typing import Any

import pytest

from tests.worker_sdk.conftest import s3_env
from tests.worker_sdk.support import (
    client,
    eventually,
    fast_config,
    fast_env,
    history,
    orchestrator,
    running,
    submit,
    wait_terminal,
    worker_process,
)
from worker_sdk import S3Config, TaskContext, Worker

pytestmark = pytest.mark.timeout(120)

MIB = 1 << 20
BIG = 200 * MIB


def read(s3: Any, uri: str) -> bytes:
    bucket, _, key = uri.removeprefix("s3://").partition("/")
    body: bytes = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    return body


async def test_nested_params_and_a_folder_round_trip(
    tmp_path: Path,
    redis_url: str,
    s3: Any,
    bucket: str,
    s3_config: S3Config,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Given files in a bucket named anywhere in a job's input, when a worker with S3
    offloading runs the task, then its handler sees local files, and the files it returns
    come back as s3:// URIs, while paths escaping its payload directory stay as they are."""
    s3.put_object(Bucket=bucket, Key="in/one/scan.png", Body=b"scan one")
    s3.put_object(Bucket=bucket, Key="in/two/scan.png", Body=b"scan two")
    s3.put_object(Bucket=bucket, Key="album/a.jpg", Body=b"a")
    s3.put_object(Bucket=bucket, Key="album/2024/b.jpg", Body=b"b")
    secret = tmp_path / "secret.txt"
    secret.write_text("do not upload")
    seen: dict[str, Any] = {}
    worker = Worker()  # configured below, once the orchestrator's URL is known

    @worker.task("transform")
    def transform(params: dict[str, Any], ctx: TaskContext) -> dict[str, Any]:  # in a thread
        data = params["input"]
        seen.update(data)
        scans = [Path(data["scans"][0]), Path(data["nested"]["deeper"]["scan"])]
        album = Path(data["album"])
        out = ctx.payload_dir / "out"
        (out / "thumbs").mkdir(parents=True)
        (out / "summary.txt").write_text(" + ".join(p.read_text() for p in scans))
        for photo in sorted(album.rglob("*.jpg")):
            (out / "thumbs" / f"{photo.stem}.thumb").write_bytes(photo.read_bytes() * 2)
        (ctx.payload_dir / "escape").symlink_to(secret)
        return {
            "summary": str(out / "summary.txt"),
            "thumbs": str(out / "thumbs"),
            "traversal": str(ctx.payload_dir / ".." / ".." / secret.name),
            "symlink": str(ctx.payload_dir / "escape"),
            "elsewhere": str(secret),
        }

    caplog.set_level(logging.WARNING, logger="worker_sdk.s3")
    with orchestrator(tmp_path, redis_url) as server:
        worker.configure(fast_config(tmp_path, server.url, s3=s3_config))
        async with running(worker), client(server) as http:
            job_id = await submit(
                http,
                "jobs/sdk_payloads",
                {
                    "scans": [f"s3://{bucket}/in/one/scan.png", "not a uri"],
                    "nested": {"deeper": {"scan": f"s3://{bucket}/in/two/scan.png"}},
                    "album": f"s3://{bucket}/album/",
                },
            )
            job = await wait_terminal(http, job_id)
            events = await history(http, job_id)
            payloads = (tmp_path / "payloads").resolve()
            # the task's files are gone once the result is in (not only at shutdown)
            await eventually(lambda: os.listdir(payloads) == [], what="the task folder removed")
    assert job["status"] == "finished", events
    assert Path(seen["scans"][0]).is_relative_to(payloads)
    assert seen["scans"][1] == "not a uri"
    result = job["result"]
    assert result["summary"] == f"s3://{bucket}/{job_id}/{job_id}-1/out/summary.txt"
    assert read(s3, result["summary"]) == b"scan one + scan two"
    assert result["thumbs"].endswith("/out/thumbs/")
    assert read(s3, result["thumbs"] + "a.thumb") == b"aa"
    assert read(s3, result["thumbs"] + "b.thumb") == b"bb"
    for key in ("traversal", "symlink", "elsewhere"):
        assert not result[key].startswith("s3://"), key
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix=job_id)["Contents"]]
    assert len(keys) == 3  # the summary and two thumbnails: nothing else left the machine
    assert caplog.text.count("is outside the task's folder") == 3
    assert os.listdir(payloads) == []  # the task's files are gone once the result is in


async def test_a_missing_object_fails_the_task_as_permanent(
    tmp_path: Path, redis_url: str, bucket: str, s3_config: S3Config
) -> None:
    with orchestrator(tmp_path, redis_url) as server:
        worker = Worker(fast_config(tmp_path, server.url, s3=s3_config))

        @worker.task("transform")
        async def transform(params: dict[str, Any], ctx: TaskContext) -> dict[str, Any]:
            raise AssertionError("the handler must not run without its input")

        async with running(worker), client(server) as http:
            job_id = await submit(http, "jobs/sdk_payloads", {"x": f"s3://{bucket}/missing.bin"})
            job = await wait_terminal(http, job_id)
            events = await history(http, job_id)
    assert job["status"] == "failed"
    [result] = [e for e in events if e["event"] == "task_result"]
    assert result["error"]["code"] == "PERMANENT_ERROR"  # not retried: it will not appear
    assert f"cannot download s3://{bucket}/missing.bin" in result["error"]["message"]


def peak_rss_mib(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    match = re.search(r"^VmHWM:\s+(\d+) kB", status, re.MULTILINE)
    assert match, status
    return int(match.group(1)) / 1024


def make_big_file(path: Path) -> str:
    digest = hashlib.sha256()
    block = bytes(range(256)) * (4 * MIB // 256)
    with path.open("wb") as sink:
        for i in range(BIG // len(block)):
            chunk = block[i % 256 :] + block[: i % 256]
            digest.update(chunk)
            sink.write(chunk)
    return digest.hexdigest()


async def test_a_200_mib_file_round_trips_with_a_small_memory(
    tmp_path: Path, redis_url: str, s3: Any, bucket: str, s3_url: str
) -> None:
    """Given a 200 MiB object, when a worker process downloads it, hashes it and returns a
    copy, then the copy is uploaded intact and the worker's peak RSS stays far below
    the file's size."""
    source = tmp_path / "big.bin"
    digest = await asyncio.to_thread(make_big_file, source)
    await asyncio.to_thread(s3.upload_file, str(source), bucket, "big/input.bin")
    source.unlink()
    with orchestrator(tmp_path, redis_url) as server:
        env = fast_env(ORCHESTRATOR_URL=server.url, **s3_env(s3_url, bucket))
        env["WORKER_PAYLOAD_DIR"] = str(tmp_path / "payloads")
        script = Path(__file__).parent / "apps" / "bigfile.py"
        with worker_process(tmp_path, "bigfile", env, script) as proc:
            proc.wait_for("registered with")
            async with client(server) as http:
                job_id = await submit(
                    http, "jobs/sdk_payloads", {"source": f"s3://{bucket}/big/input.bin"}
                )
                job = await wait_terminal(http, job_id, 90)
            peak = peak_rss_mib(proc.process.pid)
    assert job["status"] == "finished", proc.output()
    assert (job["result"]["sha256"], job["result"]["size"]) == (digest, BIG)
    copy = job["result"]["copy"]
    assert copy.startswith(f"s3://{bucket}/{job_id}/")
    key = copy.removeprefix(f"s3://{bucket}/")
    assert s3.head_object(Bucket=bucket, Key=key)["ContentLength"] == BIG
    copied = hashlib.sha256()
    for chunk in s3.get_object(Bucket=bucket, Key=key)["Body"].iter_chunks(4 * MIB):
        copied.update(chunk)
    assert copied.hexdigest() == digest
    assert peak < 150, f"peak RSS {peak:.0f} MiB for a {BIG // MIB} MiB file"
