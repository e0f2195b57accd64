"""A worker killed (SIGKILL) while its long poll is open: the orchestrator must not lease a
task to the dead connection, and what it leased there goes back at once, attempt uncounted."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.e2e.test_jobs_over_http import client, history, submit, wait_terminal
from tests.support.processes import serve, worker

pytestmark = pytest.mark.timeout(120)

ONE_TRY = """
blueprint: one_try
api_endpoint: jobs/one_try
start: work
states:
  work:
    task: echo
    retry: {max_attempts: 1}
    on: {success: done, failure: broken}
  done: {end: finished}
  broken: {end: failed}
"""


async def test_a_dead_workers_open_poll_is_not_leased_a_task(
    tmp_path: Path, redis_url: str
) -> None:
    folder = tmp_path / "blueprints"
    folder.mkdir()
    (folder / "one_try.yaml").write_text(ONE_TRY)
    # HEARTBEAT_TIMEOUT as shipped (60 s): a task leased to the dead poll would wait that long
    with serve(tmp_path, redis_url, folder) as server:
        # given a worker whose poll (60 s) is open when it is killed with SIGKILL
        with worker(tmp_path, server.url, "doomed", "echo", "--poll-timeout", "60") as doomed:
            doomed.wait_for("polling")
            doomed.stop()
        # and a live worker polling all along
        with worker(tmp_path, server.url, "alive", "echo") as alive:
            alive.wait_for("polling")
            async with client(server) as http:
                # when a job is submitted
                job_id = await submit(http, "jobs/one_try", {})
                # then the live worker runs it, at the first and only attempt
                job = await wait_terminal(http, job_id, 20)
                events = await history(http, job_id)
    assert job["status"] == "finished", events
    picked = [e for e in events if e["event"] == "task_picked_up"]
    assert [e.get("worker") for e in picked] == ["alive"], events
    assert not [e for e in events if e["event"] == "task_result" and e.get("error")]
