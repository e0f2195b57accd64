"""Worker processes built on the SDK against real orchestrator processes on a real Redis:
what happens when processes die, come back, share the load, or are told to stop."""

from __future__ import annotations

import asyncio
import json
import signal
from collections import Counter
from pathlib import Path

import pytest

from tests.support.redis_server import free_port
from tests.worker_sdk.support import (
    client,
    eventually,
    fast_env,
    history,
    orchestrator,
    records,
    submit,
    wait_terminal,
    worker_process,
)

pytestmark = pytest.mark.timeout(90)


def started(record: Path) -> list[str]:
    return [r[1] for r in records(record) if r[0] == "start"]


def ended(record: Path) -> list[str]:
    return [r[1] for r in records(record) if r[0] == "end"]


async def test_failover_when_the_primary_is_killed_and_back_when_it_returns(
    tmp_path: Path, redis_url: str
) -> None:
    """Given a worker in FAILOVER mode over a primary and a secondary sharing one Redis,
    when the primary is SIGKILLed mid-stream and later comes back, then the worker moves to
    the secondary, returns to the primary, and every task runs exactly once."""
    record = tmp_path / "record.txt"
    primary_port = free_port()
    # A task the primary leased to the worker's poll just as it was killed never reaches the
    # worker; the first heartbeat recorded a few seconds after the lease without it takes it
    # back (engine/runtime/tasks.py lease_problem), at the shipped 60 s HEARTBEAT_TIMEOUT.
    with (
        orchestrator(tmp_path, redis_url, port=primary_port) as primary,
        orchestrator(tmp_path, redis_url) as secondary,
    ):
        urls = [{"url": primary.url}, {"url": secondary.url}]
        env = fast_env(
            ORCHESTRATORS_CONFIG=json.dumps(urls),
            MAX_CONCURRENT_TASKS="4",
            APP_DELAY="0.1",
            APP_RECORD=str(record),
        )
        with worker_process(tmp_path, "failover", env) as proc:
            proc.wait_for(f"registered with {primary.url}")
            proc.wait_for(f"registered with {secondary.url}")
            async with client(secondary) as http:
                before = [await submit(http, "jobs/sdk_echo", {"n": i}) for i in range(30)]
                await eventually(lambda: len(ended(record)) >= 8, what="a few tasks done")
                primary.kill()  # mid-stream: tasks leased, running and being reported
                during = [await submit(http, "jobs/sdk_echo", {"n": i}) for i in range(20)]
                done = [await wait_terminal(http, j) for j in before + during]
                back = len(proc.output())
                with orchestrator(tmp_path, redis_url, port=primary_port):
                    # once the poll open on the secondary has ended
                    await eventually(
                        lambda: f"polling {primary.url} for tasks" in proc.output()[back:],
                        what="the worker returning to the primary",
                    )
                    after = [await submit(http, "jobs/sdk_echo", {"n": i}) for i in range(10)]
                    done += [await wait_terminal(http, j) for j in after]
                entries = [await history(http, j) for j in before + during + after]

    assert [d["status"] for d in done] == ["finished"] * 60
    for events in entries:  # one result per job: nothing lost, nothing run twice
        assert [e["event"] for e in events].count("task_result") == 1
        assert [e["event"] for e in events].count("job_finished") == 1
    runs = Counter(started(record))
    assert len(runs) == 60
    assert set(runs.values()) == {1}
    served = [d["result"]["served_by"] for d in done]
    assert primary.url in served[:30]
    assert set(served[30:50]) == {secondary.url}  # the primary was dead
    assert set(served[50:]) == {primary.url}  # back to the primary once it answered


async def test_round_robin_spreads_tasks_and_an_idle_orchestrator_starves_nobody(
    tmp_path: Path, redis_url: str
) -> None:
    """Given three orchestrators on three separate stores, two with a backlog and one idle,
    and a ROUND_ROBIN worker with a single slot and a long poll timeout, then the worker
    alternates between the busy two and the idle one never holds it up."""
    record = tmp_path / "record.txt"
    base = redis_url.rsplit("/", 1)[0]
    with (
        orchestrator(tmp_path, f"{base}/1") as a,
        orchestrator(tmp_path, f"{base}/2") as b,
        orchestrator(tmp_path, f"{base}/3") as idle,
    ):
        async with client(a) as on_a, client(b) as on_b:
            jobs_a = [await submit(on_a, "jobs/sdk_echo", {"n": i}) for i in range(20)]
            jobs_b = [await submit(on_b, "jobs/sdk_echo", {"n": i}) for i in range(20)]
            env = fast_env(
                ORCHESTRATORS_CONFIG=json.dumps([{"url": o.url} for o in (a, b, idle)]),
                MULTI_ORCHESTRATOR_MODE="ROUND_ROBIN",
                MAX_CONCURRENT_TASKS="1",
                WORKER_POLL_TIMEOUT="20",
                APP_DELAY="0.02",
                APP_RECORD=str(record),
            )
            with worker_process(tmp_path, "spreader", env):
                # With a 20 s poll on `idle` holding the only slot, this would take minutes.
                done = [await wait_terminal(on_a, j, 30) for j in jobs_a]
                done += [await wait_terminal(on_b, j, 30) for j in jobs_b]

    assert [d["status"] for d in done] == ["finished"] * 40
    order = [r[2] for r in records(record) if r[0] == "start"]
    first = Counter(order[:30])  # both still had a backlog
    assert set(first) == {a.url, b.url}
    assert 12 <= first[a.url] <= 18, order


async def test_a_wrong_token_is_refused_with_a_clear_log_line(
    tmp_path: Path, redis_url: str
) -> None:
    """Given a worker whose individual token is wrong, then the registration is refused,
    the worker says so once (naming the variable to fix) and keeps retrying with backoff."""
    with orchestrator(tmp_path, redis_url) as server:
        env = fast_env(ORCHESTRATOR_URL=server.url, AVTOMATIKA_WORKER_TOKEN="not-my-token")
        with worker_process(tmp_path, "intruder", env) as proc:
            proc.wait_for("refused worker")
            await asyncio.sleep(1.0)  # several more attempts
            output = proc.output()
            assert proc.process.poll() is None
    line = (
        f"ERROR worker_sdk: orchestrator {server.url} refused worker 'intruder': "
        "Unauthorized: wrong X-Worker-Token for worker 'intruder' (HTTP 403); check the "
        "token from AVTOMATIKA_WORKER_TOKEN against the orchestrator's WORKER_TOKEN or "
        "workers.toml; retrying with backoff"
    )
    assert output.count(line) == 1, output
    assert "not-my-token" not in output


async def test_sigterm_under_load_finishes_running_tasks_and_loses_nothing(
    tmp_path: Path, redis_url: str
) -> None:
    """Given a busy worker, when it gets SIGTERM, then it takes no new task, finishes and
    reports the running ones, exits 0; a second worker does the rest, and each task ran
    once."""
    record = tmp_path / "record.txt"
    with orchestrator(tmp_path, redis_url) as server:
        env = fast_env(
            ORCHESTRATOR_URL=server.url,
            MAX_CONCURRENT_TASKS="4",
            APP_DELAY="0.5",
            APP_RECORD=str(record),
            WORKER_SHUTDOWN_TIMEOUT="20",
        )
        async with client(server) as http:
            jobs = [await submit(http, "jobs/sdk_echo", {"n": i}) for i in range(24)]
            with worker_process(tmp_path, "leaving", env) as leaving:
                await eventually(lambda: len(started(record)) >= 6, what="tasks starting")
                leaving.process.send_signal(signal.SIGTERM)
                code = await asyncio.to_thread(leaving.process.wait, 30)
            first_started, first_ended = started(record), ended(record)
            with worker_process(tmp_path, "arriving", env):
                done = [await wait_terminal(http, j) for j in jobs]
            entries = [await history(http, j) for j in jobs]

    assert code == 0, leaving.output()
    assert "SIGTERM: shutting down" in leaving.output()
    assert "worker 'leaving' stopped" in leaving.output()
    assert "not delivered" not in leaving.output()
    assert sorted(first_started) == sorted(first_ended)  # finished, none cancelled
    assert 6 <= len(first_started) < 24
    assert [d["status"] for d in done] == ["finished"] * 24
    results = [e for events in entries for e in events if e["event"] == "task_result"]
    assert len(results) == 24  # one per job
    by_leaving = {e["task_id"] for e in results if e["worker"] == "leaving"}
    assert by_leaving == set(first_started)  # every result of the leaving worker arrived
    runs = Counter(started(record))
    assert len(runs) == 24
    assert set(runs.values()) == {1}


def test_bad_configuration_stops_the_worker_at_start_up(tmp_path: Path) -> None:
    """Given a mistake in the environment, the worker process exits with status 2 and one
    line per problem, naming the variable."""
    env = fast_env(ORCHESTRATORS_CONFIG='[{"url": "orch-1:8080"}]', MULTI_ORCHESTRATOR_MODE="X")
    with worker_process(tmp_path, "misconfigured", env) as proc:
        code = proc.process.wait(timeout=20)
        output = proc.output()
    assert code == 2, output
    assert "worker: configuration error: ORCHESTRATORS_CONFIG[0].url: 'orch-1:8080'" in output
    assert "worker: configuration error: MULTI_ORCHESTRATOR_MODE: 'X' is not a mode" in output
    assert "Traceback" not in output
