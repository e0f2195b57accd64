"""Results near and past the server's body limit, from an in-process SDK worker to a real
`interlock serve` (MAX_BODY_BYTES 1 MiB by default): sent as UTF-8; one the server cannot
take fails its task at once with RESULT_TOO_LARGE instead of vanishing, or, with S3
offloading on, goes with its largest values moved to S3."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from tests.worker_sdk.support import (
    client,
    fast_config,
    history,
    orchestrator,
    running,
    submit,
    wait_terminal,
)
from worker_sdk import S3Config, TaskContext, Worker

pytestmark = pytest.mark.timeout(60)


def text_worker(config: Any) -> Worker:
    worker = Worker(config)

    @worker.task("echo")
    async def echo(params: dict[str, Any], ctx: TaskContext) -> dict[str, Any]:
        return {"text": "ж" * int(params["n"])}  # two bytes in UTF-8, six as \\u0436

    return worker


async def test_non_ascii_results_travel_as_utf8(tmp_path: Path, redis_url: str) -> None:
    # given a result of 300,000 Cyrillic letters: 600 KB in UTF-8, 1.8 MB ASCII-escaped
    with orchestrator(tmp_path, redis_url) as server:
        async with running(text_worker(fast_config(tmp_path, server.url))), client(server) as http:
            job_id = await submit(http, "jobs/sdk_echo", {"n": 300_000})
            # then it fits under the 1 MiB limit and the job finishes with it
            doc = await wait_terminal(http, job_id, 30)
    assert doc["status"] == "finished"
    assert doc["result"]["text"] == "ж" * 300_000


async def test_a_result_too_large_for_the_server_fails_the_task_at_once(
    tmp_path: Path, redis_url: str
) -> None:
    # given a result of 2 MB (HEARTBEAT_TIMEOUT 1h: only the worker's answer can end the job)
    env = {"HEARTBEAT_TIMEOUT": "1h", "DEFAULT_RUN_TIMEOUT": "1h"}
    with orchestrator(tmp_path, redis_url, env=env) as server:
        async with running(text_worker(fast_config(tmp_path, server.url))), client(server) as http:
            job_id = await submit(http, "jobs/sdk_echo", {"n": 1_000_000})
            # then the task fails with RESULT_TOO_LARGE, never retried (the next try is alike)
            doc = await wait_terminal(http, job_id, 30)
            entries = await history(http, job_id)
    assert doc["status"] == "failed"
    errors = [e["error"] for e in entries if e["event"] == "task_result"]
    assert [e["code"] for e in errors] == ["RESULT_TOO_LARGE"]
    assert "MAX_BODY_BYTES" in errors[0]["message"] or "1048576" in errors[0]["message"]


async def run_with_s3(
    tmp_path: Path,
    redis_url: str,
    s3_config: S3Config,
    max_body_bytes: int,
    make_worker: Callable[[Any], Worker],
    endpoint: str,
    n: int,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The ended job and its history, run by an S3-offloading worker on a server that takes
    bodies up to `max_body_bytes` (HEARTBEAT_TIMEOUT 1h: only the worker's answer counts)."""
    env = {
        "MAX_BODY_BYTES": str(max_body_bytes),
        "HEARTBEAT_TIMEOUT": "1h",
        "DEFAULT_RUN_TIMEOUT": "1h",
    }
    with orchestrator(tmp_path, redis_url, env=env) as server:
        config = replace(fast_config(tmp_path, server.url), s3=s3_config)
        async with running(make_worker(config)), client(server) as http:
            job_id = await submit(http, endpoint, {"n": n})
            return await wait_terminal(http, job_id, 30), await history(http, job_id)


def chain_worker(config: Any) -> Worker:
    worker = Worker(config)

    @worker.task("make_text")
    async def make_text(params: dict[str, Any], ctx: TaskContext) -> dict[str, Any]:
        n = int(params["n"])
        return {"text": "ж" * n, "n": n, "tag": "small"}

    @worker.task("read_text")
    def read_text(params: dict[str, Any], ctx: TaskContext) -> dict[str, Any]:
        text = json.loads(Path(params["text"]).read_text(encoding="utf-8"))  # a local copy
        return {"length": len(text), "all_zhe": set(text) == {"ж"}, "n_seen": params["n"]}

    return worker


async def test_with_s3_a_result_too_large_goes_with_its_large_values_in_s3(
    tmp_path: Path, redis_url: str, s3: Any, bucket: str, s3_config: S3Config
) -> None:
    # given a server taking 100 kB bodies and a worker with S3 offloading on, when a task
    # returns 200 kB of text, then a task reads it
    doc, entries = await run_with_s3(
        tmp_path, redis_url, s3_config, 100_000, chain_worker, "jobs/sdk_chain", 100_000
    )
    # then the job finishes: the text went to S3, the small values stayed inline
    assert doc["status"] == "finished", entries
    made, read = doc["result"]["made"], doc["result"]["read"]
    assert (made["n"], made["tag"]) == (100_000, "small")
    assert made["text"].startswith(f"s3://{bucket}/")
    assert made["text"].endswith("/_values/text.json")
    key = made["text"].removeprefix(f"s3://{bucket}/")
    stored = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    assert json.loads(stored) == "ж" * 100_000  # GET job's URI reads back as the value
    # and the next task read the whole value from its local copy
    assert read == {"length": 100_000, "all_zhe": True, "n_seen": 100_000}


async def test_with_s3_a_result_that_cannot_fit_still_fails_with_result_too_large(
    tmp_path: Path, redis_url: str, s3: Any, bucket: str, s3_config: S3Config
) -> None:
    # given a limit of 2 kB and a result of 2,000 numbers, each shorter than a URI
    doc, entries = await run_with_s3(
        tmp_path, redis_url, s3_config, 2000, many_keys_worker, "jobs/sdk_echo", 2000
    )
    # then the task fails at once with RESULT_TOO_LARGE saying S3 would not help
    assert doc["status"] == "failed"
    errors = [e["error"] for e in entries if e["event"] == "task_result"]
    assert [e["code"] for e in errors] == ["RESULT_TOO_LARGE"]
    assert "moving its values to S3 would not make it fit" in errors[0]["message"]
    assert "Contents" not in s3.list_objects_v2(Bucket=bucket)  # nothing uploaded in vain


def many_keys_worker(config: Any) -> Worker:
    worker = Worker(config)

    @worker.task("echo")
    async def echo(params: dict[str, Any], ctx: TaskContext) -> dict[str, Any]:
        return {f"key-{i}": i for i in range(int(params["n"]))}  # 2,000 small values

    return worker
