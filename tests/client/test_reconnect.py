"""`wait` outlives its server: killed mid-wait and started again on the same address, the
server answers the reconnected long poll once the job ends (its jobs are in Redis)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from interlock_client import AsyncClient, Client
from tests.support.processes import CLIENT_TOKEN, serve
from tests.support.redis_server import free_port

pytestmark = pytest.mark.timeout(120)

HOLD = """
blueprint: hold
api_endpoint: jobs/hold
start: ask
states:
  ask:
    approval: {message: "go?"}
    on: {approve: done}
  done: {end: finished, output: {went: true}}
"""


async def test_wait_reconnects_to_a_server_started_again(tmp_path: Path, redis_url: str) -> None:
    folder = tmp_path / "blueprints"
    folder.mkdir()
    (folder / "hold.yaml").write_text(HOLD)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with serve(tmp_path, redis_url, folder, port=port) as first:
        with Client(url, CLIENT_TOKEN) as client:
            job_id = client.submit("jobs/hold").job_id
        blocking = Client(url, CLIENT_TOKEN)
        aio = AsyncClient(url, CLIENT_TOKEN)
        waits = asyncio.gather(
            asyncio.to_thread(blocking.wait, job_id, timeout=90), aio.wait(job_id, timeout=90)
        )
        # Given both clients waiting on the job (their long polls in flight, or refused)...
        assert (await aio.get(job_id))["status"] == "waiting_for_human"
        first.kill()  # ...when the server dies without a goodbye
    with serve(tmp_path, redis_url, folder, port=port), Client(url, CLIENT_TOKEN) as client:
        # ...and another takes its address and the job is approved there,
        client.approve(job_id, "approve")
        ended = await waits
    # then both waits end with the finished job.
    assert [job["status"] for job in ended] == ["finished", "finished"]
    assert [job["result"] for job in ended] == [{"went": True}] * 2
    blocking.close()
    await aio.close()
