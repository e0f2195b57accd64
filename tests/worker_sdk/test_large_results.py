"""Results near and past the server's body limit, from an in-process SDK worker to a real
`interlock serve` (MAX_BODY_BYTES 1 MiB by default): sent as UTF-8, and one the server
cannot take fails its task at once with RESULT_TOO_LARGE instead of vanishing."""

from __future__ import annotations

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
from worker_sdk import TaskContext, Worker

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
