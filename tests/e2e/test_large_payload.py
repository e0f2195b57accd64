"""A job that carries 1 MB of initial_data through three task states, end to end: a real
`interlock serve` on a real Redis and a worker_sdk echo worker process (issue 18). The
payload is written once per copy the job needs, not again with every later transition.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import redis.asyncio as aioredis

from tests.e2e.test_flow_over_http import client, submit, terminal
from tests.e2e.test_wide_fanout import echo_workers
from tests.support.processes import folder_with, serve

pytestmark = pytest.mark.timeout(300)

SIZE = 1_000_000

CARRY = """
blueprint: carry
api_endpoint: jobs/carry
start: a
states:
  a: {task: echo, params: {pad: "${ initial_data.pad }"}, on: {success: b}}
  b: {task: echo, params: {pad: "${ steps.a.pad }"}, on: {success: c}}
  c: {task: echo, params: {pad: "${ state_history.pad }"}, on: {success: done}}
  done:
    end: finished
    output:
      same: "${ steps.a.pad == steps.c.pad && steps.b.pad == initial_data.pad }"
      size: "${ length(steps.c.pad) }"
"""


async def test_a_megabyte_of_initial_data_through_three_task_states(
    tmp_path: Path, redis_url: str
) -> None:
    folder = folder_with(tmp_path, carry=CARRY)
    redis = aioredis.Redis.from_url(redis_url, decode_responses=True)
    try:
        with (
            serve(tmp_path, redis_url, folder, {}) as server,
            echo_workers(tmp_path, server.url, 1),
        ):
            async with client(server) as http:
                before = await net_input(redis)
                # given a job whose initial_data is a 1 MB string, passed on by each state
                job_id = await submit(http, "jobs/carry", {"pad": "x" * SIZE})
                # when it runs to its end, then every state saw the same megabyte
                job = await terminal(http, job_id, within_s=120)
                sent = await net_input(redis) - before
        assert job["status"] == "finished", job.get("error")
        assert job["result"] == {"same": True, "size": SIZE}
        (key,) = [key async for key in redis.scan_iter(match=f"*:job:{job_id}")]
        fields = {str(name): str(value) for name, value in (await redis.hgetall(key)).items()}
    finally:
        await redis.aclose()
    # and its hash keeps the input and each output once, a small document and no payload
    # copies (1 + 3 copies; the document carried 3 more, and the payloads 3, before)
    big = sorted(name for name, value in fields.items() if len(value) > SIZE)
    assert big == ["input", "o:0", "o:1", "o:2"], big
    assert len(fields["doc"]) < 10_000
    assert sum(map(len, fields.values())) < 4 * SIZE + 50_000
    # and what was sent to Redis is about a megabyte per copy made: the input, each
    # task's payload and each output, 7 in all (13 when each commit rewrote the earlier
    # outputs inside the document)
    assert 7 * SIZE < sent < 8 * SIZE, sent


async def net_input(redis: aioredis.Redis) -> int:
    """The bytes Redis has read from its clients so far."""
    return int((await redis.info("stats"))["total_net_input_bytes"])
