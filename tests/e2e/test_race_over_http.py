"""Races and subflow branches through real processes: `interlock serve` on a real Redis (and on
a Redis Cluster), worker_sdk workers, a client speaking HTTP only.

A race of three branches where one is fast: the fast one wins and the workers running the
other two are told to cancel them. A for_each whose branches run a whole blueprint each, at
most two at a time, joined in order; a failing child is caught by its code; and the fan-out
finishes on a second orchestrator when the first is SIGKILLed part-way.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.test_flow_over_http import Http, client, events, names, submit, terminal, until, view
from tests.support.processes import ROOT, WORKER_TOKEN, folder_with, serve

pytestmark = pytest.mark.timeout(180)

RACE = """
blueprint: race
api_endpoint: jobs/race
start: fetch
states:
  fetch:
    parallel:
      compete: true
      branches:
        slow: {task: sleep, params: {seconds: 600, name: slow}}
        fast: {task: sleep, params: {until_file: "${ initial_data.go }", name: fast}}
        slower: {task: sleep, params: {seconds: 900, name: slower}}
    on: {success: done, failure: broken}
  done: {end: finished, output: "${ steps.fetch }"}
  broken: {end: failed}
"""

FAN = """
blueprint: fan
api_endpoint: jobs/fan
start: each
states:
  each:
    parallel:
      for_each: initial_data.legs
      max_concurrency: 2
      subflow: {blueprint: leg, input: "${ item }"}
    on: {success: done, "error:LEG_BROKE": caught}
  done: {end: finished, output: "${ steps.each }"}
  caught: {end: failed, error: {code: CAUGHT, details: "${ steps.each.error }"}}
"""

LEG = """
blueprint: leg
start: work
states:
  work:
    task: sleep
    params:
      seconds: "${ initial_data.seconds || `0.05` }"
      name: "${ initial_data.name }"
      fail: "${ initial_data.fail }"
    retry: {max_attempts: 1}
    on: {success: done, "error:NOPE": broke}
  done: {end: finished, output: "${ steps.work }"}
  broke: {end: failed, error: {code: LEG_BROKE, message: "leg ${ initial_data.name } broke"}}
"""


@contextlib.contextmanager
def sleep_worker(tmp_path: Path, url: str, worker_id: str) -> Iterator[Path]:
    """A worker_sdk process serving `sleep` (tests/support/sleep_worker.py); yields its log."""
    log = tmp_path / f"{worker_id}.log"
    env = {
        **os.environ,
        "ORCHESTRATOR_URL": url,
        "WORKER_TOKEN": WORKER_TOKEN,
        "WORKER_ID": worker_id,
        "MAX_CONCURRENT_TASKS": "8",
        "WORKER_POLL_TIMEOUT": "1",
        "WORKER_HEARTBEAT_INTERVAL": "0.2",  # cancel requests ride on heartbeat answers
        "WORKER_SHUTDOWN_TIMEOUT": "1",
    }
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", "tests.support.sleep_worker"],
            cwd=ROOT,
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    try:
        yield log
    finally:
        process.kill()
        process.wait(timeout=10)


async def leased(http: Http, job_id: str, count: int) -> list[dict[str, Any]] | None:
    tasks = [t for t in (await view(http, job_id)).get("tasks", []) if t["status"] == "leased"]
    return tasks if len(tasks) == count else None


async def test_a_race_of_three_branches_is_won_by_the_fast_one(
    tmp_path: Path, any_redis_url: str
) -> None:
    """Given a race whose three branches run on a worker, when the fast one ends, then it
    wins: the state's output is its result, and the worker is told to cancel the two
    others, whose handlers stop; the history shows one winner and two cancelled tasks."""
    go = tmp_path / "go"
    folder = folder_with(tmp_path, race=RACE)
    with (
        serve(tmp_path, any_redis_url, folder) as server,
        sleep_worker(tmp_path, server.url, "s-race") as log,
    ):
        async with client(server) as http:
            job_id = await submit(http, "jobs/race", {"go": str(go)})
            tasks = await until("three branches leased", lambda: leased(http, job_id, 3))
            by_name = {t["branch"]: t["id"] for t in tasks}
            go.touch()  # the fast branch may end now
            job = await terminal(http, job_id)
            assert job["status"] == "finished", job
            assert job["result"] == {"branch": "fast", "result": {"slept": 0.0, "name": "fast"}}

            history = await events(http, job_id)
            assert names(history).count("parallel_won") == 1
            cancelled = [e for e in history if e["event"] == "task_cancelled"]
            assert sorted(e["task_id"] for e in cancelled) == sorted(
                task_id for branch, task_id in by_name.items() if branch != 1
            )
            assert {e.get("reason") for e in cancelled} == {"RACE_LOST"}

            async def both_cancelled() -> bool:
                text = log.read_text()
                return all(
                    f"cancelled {task_id}" in text
                    for branch, task_id in by_name.items()
                    if branch != 1
                )

            await until("the losers' handlers cancelled", both_cancelled)


async def test_a_for_each_of_subflow_branches_joins_the_childrens_outputs(
    tmp_path: Path, any_redis_url: str
) -> None:
    """Given a for_each whose branches each run the `leg` blueprint (two at a time), when
    five legs run, then each is a child job of the fan-out and the join lists their outputs
    in order; and when one leg fails, its code is caught and the other child is cancelled."""
    folder = folder_with(tmp_path, fan=FAN, leg=LEG)
    with (
        serve(tmp_path, any_redis_url, folder) as server,
        sleep_worker(tmp_path, server.url, "s-fan"),
    ):
        async with client(server) as http:
            legs_ok = [{"name": n} for n in "abcde"]
            job_id = await submit(http, "jobs/fan", {"legs": legs_ok})
            job = await terminal(http, job_id)
            assert job["status"] == "finished", job
            assert job["result"] == [{"slept": 0.05, "name": n} for n in "abcde"]

            history = await events(http, job_id)
            started = [e for e in history if e["event"] == "subflow_started"]
            assert sorted(e["branch"] for e in started) == [0, 1, 2, 3, 4]
            running = peak = 0
            for event in history:  # never more than max_concurrency children at once
                running += {"subflow_started": 1, "subflow_ended": -1}.get(event["event"], 0)
                peak = max(peak, running)
            assert peak == 2
            child = await view(http, started[0]["child_job_id"])
            assert (child["blueprint"], child["parent_job_id"]) == ("leg", job_id)

            # A failing leg, while a slow one runs: caught by code, the slow child cancelled
            legs: list[dict[str, Any]] = [
                {"name": "slow", "seconds": 600},
                {"name": "bad", "fail": "NOPE", "seconds": 2},
            ]
            failing = await submit(http, "jobs/fan", {"legs": legs})

            async def children_listed() -> list[dict[str, Any]] | None:
                found = (await view(http, failing)).get("parallel", {}).get("children")
                return found if found and len(found) == 2 else None

            listed = await until("both children running", children_listed)
            assert [c["branch"] for c in listed] == [0, 1]
            async with http.get(f"/api/v1/jobs/{failing}/explain") as resp:
                explained = await resp.json()
            ids = [c["child_job_id"] for c in listed]
            assert (
                f"2 of them wait for their child jobs ({ids[0]}, {ids[1]})"
                in (explained["sentence"])
            )
            assert explained["facts"]["parallel"]["child_job_ids"] == ids
            job = await terminal(http, failing)
            assert (job["status"], job["error"]["code"]) == ("failed", "CAUGHT"), job
            details = job["error"]["details"]
            assert (details["code"], details["branch"]) == ("LEG_BROKE", 1)
            slow = await terminal(http, listed[0]["child_job_id"])
            assert slow["status"] == "cancelled"


async def test_subflow_branches_finish_on_another_orchestrator_after_a_sigkill(
    tmp_path: Path, redis_url: str
) -> None:
    """Given two orchestrators, when the one running a fan-out of subflow branches is
    SIGKILLed part-way, then the other finishes it and joins once: the children report
    their ends to the parent through the store, whichever orchestrator started them. (That
    a child lost before it was written is started again, and that a lost end is found by
    the parent's check, is shown on a fake clock in tests/engine/test_rules_race.py.)"""
    folder = folder_with(tmp_path, fan=FAN, leg=LEG)
    settings = {"HEARTBEAT_TIMEOUT": "5s"}
    with (
        serve(tmp_path, redis_url, folder, settings) as survivor,
        sleep_worker(tmp_path, survivor.url, "s-kill"),
    ):
        with serve(tmp_path, redis_url, folder, settings) as doomed:
            async with client(doomed) as http:
                legs = [{"name": f"leg{i}", "seconds": 0.3} for i in range(6)]
                job_id = await submit(http, "jobs/fan", {"legs": legs})

                async def one_leg_done() -> bool:
                    history = await events(http, job_id)
                    return "subflow_ended" in names(history)

                await until("a leg ended", one_leg_done)
                doomed.kill()
        async with client(survivor) as http:
            job = await terminal(http, job_id, within_s=90)
            assert job["status"] == "finished", job
            assert [r["name"] for r in job["result"]] == [f"leg{i}" for i in range(6)]
            history = await events(http, job_id)
            assert names(history).count("parallel_joined") == 1
