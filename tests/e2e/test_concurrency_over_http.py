"""Concurrency keys and rate limits through real processes: two `interlock serve` on one
Redis, many concurrent submitters, and workers that record when each task ran.

The overlap above the limit is counted from the workers' own timestamps: a task's handler
starts after its job was admitted and ends before its result is sent, so two handlers that
overlap belong to jobs that held a slot at the same time.
"""

from __future__ import annotations

import asyncio
import json
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.test_flow_over_http import Http, client, events, submit, terminal, view
from tests.support.processes import WorkerProcess, serve, worker

pytestmark = pytest.mark.timeout(240)

KEYS = 5
PER_KEY = 40  # 200 jobs
LIMIT = 2  # blueprints/concurrency_keys.yaml


def timeline(path: Path) -> dict[str, tuple[float, float]]:
    """job id -> (start, end) of its task, from the workers' JSON lines."""
    found: dict[str, tuple[float, float]] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        entry = json.loads(line)
        found[entry["job_id"]] = (entry["start"], entry["end"])
    return found


def most_at_once(spans: list[tuple[float, float]]) -> int:
    """The largest number of the intervals that overlap at one moment."""
    edges = sorted([(start, 1) for start, _ in spans] + [(end, -1) for _, end in spans])
    running = peak = 0
    for _, step in edges:  # at equal times an end (-1) sorts first: touching is no overlap
        running += step
        peak = max(peak, running)
    return peak


async def submitter(http: Http, customer: str, count: int) -> list[str]:
    """`count` jobs for one customer, one after the other (each answered before the next)."""
    return [
        await submit(http, "jobs/customer_report", {"customer_id": customer}) for _ in range(count)
    ]


async def ended_job(http: Http, job_id: str, gate: asyncio.Semaphore) -> dict[str, Any]:
    async with gate:
        return await terminal(http, job_id, within_s=180)


async def admission(http: Http, job_id: str) -> int:
    admitted = [e["n"] for e in await events(http, job_id) if e["event"] == "concurrency_admitted"]
    assert len(admitted) == 1, admitted
    return int(admitted[0])


def email_worker(
    tmp_path: Path, url: str, worker_id: str, delay: float, timeline: Path
) -> AbstractContextManager[WorkerProcess]:
    """A worker of `send_email` with room for 8 tasks, each taking `delay` s, that writes
    when each task starts and ends to `timeline`."""
    args = ("--slots", "8", "--delay", str(delay), "--timeline", str(timeline))
    return worker(tmp_path, url, worker_id, "send_email", *args)


async def test_jobs_of_a_key_never_run_more_than_the_limit_and_start_in_submission_order(
    tmp_path: Path, any_redis_url: str
) -> None:
    """Given two servers on one Redis (or one Redis Cluster) and workers with room for far
    more than the limit, when ten submitters (two per customer, one on each server) send
    200 jobs over five customers at once, then no customer ever has more than 2 tasks
    running at a moment, it does reach 2, and each submitter's jobs are admitted in the
    order it sent them."""
    lines = tmp_path / "timeline.jsonl"
    with (
        serve(tmp_path, any_redis_url) as one,
        serve(tmp_path, any_redis_url) as two,
        email_worker(tmp_path, one.url, "w-1", 0.05, lines),
        email_worker(tmp_path, two.url, "w-2", 0.05, lines),
    ):
        async with client(one) as http_one, client(two) as http_two:
            customers = [f"customer-{k}" for k in range(KEYS)]
            gate = asyncio.Semaphore(16)  # polls at a time, as a client would bound them
            sequences = await asyncio.gather(
                *(
                    submitter(http, c, PER_KEY // 2)
                    for c in customers
                    for http in (http_one, http_two)
                )
            )
            ended = await asyncio.gather(
                *(ended_job(http_one, job_id, gate) for seq in sequences for job_id in seq)
            )
            assert {job["status"] for job in ended} == {"finished"}
            spans = timeline(lines)
            for k, customer in enumerate(customers):
                ids = [*sequences[2 * k], *sequences[2 * k + 1]]
                # Then at most LIMIT ran at once (and the limit was reached: it is what held
                # the others back, with 16 worker slots free)
                assert most_at_once([spans[job_id] for job_id in ids]) == LIMIT, customer
                for seq in sequences[2 * k : 2 * k + 2]:
                    numbers = [await admission(http_one, job_id) for job_id in seq]
                    assert numbers == sorted(numbers), (customer, numbers)
            done = await view(http_two, sequences[0][0])
            assert done["concurrency"]["key"] == "customer-0"


async def test_a_job_waiting_for_its_key_is_explained_and_a_bad_key_is_refused(
    tmp_path: Path, redis_url: str
) -> None:
    """Given a customer's two running jobs (no worker takes their tasks), a third waits
    `queued`, and explain says why; a job whose key is empty gets a 400."""
    with serve(tmp_path, redis_url) as one:
        async with client(one) as http:
            ids = [
                await submit(http, "jobs/customer_report", {"customer_id": 42}) for _ in range(3)
            ]
            third = await view(http, ids[2])
            assert third["status"] == "queued"
            assert third["concurrency"]["waiting"] is True
            assert third["concurrency"]["reason"].startswith(
                "waiting for a slot of concurrency key 42"
            )
            async with http.get(f"/api/v1/jobs/{ids[2]}/explain") as resp:
                body: dict[str, Any] = await resp.json()
            assert body["sentence"].startswith(
                "waiting for concurrency key initial_data.customer_id=42: 2 of 2 running"
            ), body
            assert body["facts"]["concurrency"]["place_in_line"] == 1
            async with http.post(
                "/api/v1/jobs/customer_report", json={"initial_data": {"customer_id": ""}}
            ) as resp:
                refused = await resp.json()
            assert resp.status == 400
            assert refused["error"]["code"] == "invalid_concurrency_key"
            assert "gave a string of 0 characters" in refused["error"]["message"]
            # Cancelling a running job lets the waiting one in
            async with http.post(f"/api/v1/jobs/{ids[0]}/cancel") as resp:
                assert resp.status == 200
            for _ in range(200):
                job = await view(http, ids[2])
                if not job["concurrency"]["waiting"]:
                    break
                await asyncio.sleep(0.05)
            assert job["concurrency"]["waiting"] is False
            assert job["concurrency"]["admission"] == 3


RATE, BURST = 4, 2


def most_in_a_second(starts: list[float]) -> int:
    """The largest number of `starts` within any window of one second."""
    starts = sorted(starts)
    best, first = 0, 0
    for last, at in enumerate(starts):
        while at - starts[first] >= 1.0:
            first += 1
        best = max(best, last - first + 1)
    return best


async def test_a_rate_limited_task_type_is_leased_at_most_rate_plus_burst_per_second(
    tmp_path: Path, redis_url: str
) -> None:
    """Given two servers sharing TASK_RATE_LIMITS=send_email=4/s:2 and 16 worker slots,
    when 30 jobs of distinct customers are submitted at once, then all finish, and in no
    second did the workers start more than rate + burst of their tasks."""
    lines = tmp_path / "rates.jsonl"
    env = {"TASK_RATE_LIMITS": f"send_email={RATE}/s:{BURST}"}
    with (
        serve(tmp_path, redis_url, env=env) as one,
        serve(tmp_path, redis_url, env=env) as two,
        worker(tmp_path, one.url, "w-1", "send_email", "--slots", "8", "--timeline", str(lines)),
        worker(tmp_path, two.url, "w-2", "send_email", "--slots", "8", "--timeline", str(lines)),
    ):
        async with client(one) as http_one, client(two) as http_two:
            ids = await asyncio.gather(
                *(
                    submit(http, "jobs/customer_report", {"customer_id": f"c{i}"})
                    for i, http in enumerate([http_one, http_two] * 15)
                )
            )
            ended = await asyncio.gather(
                *(terminal(http_one, job_id, within_s=120) for job_id in ids)
            )
            assert {job["status"] for job in ended} == {"finished"}
            starts = [start for start, _ in timeline(lines).values()]
            assert len(starts) == 30
            assert most_in_a_second(starts) <= RATE + BURST


async def test_jobs_of_a_key_all_run_within_the_limit_after_a_sigkill(
    tmp_path: Path, redis_url: str
) -> None:
    """Given two servers and a worker on the second, when the first takes 12 jobs of one
    customer and is killed (SIGKILL) right away, wherever it was (a job made but not in
    line, admitted but not started, ...), then every job it accepted still runs, on the
    second server, never more than 2 at a time."""
    lines = tmp_path / "after-kill.jsonl"
    with (
        serve(tmp_path, redis_url) as one,
        serve(tmp_path, redis_url) as two,
        email_worker(tmp_path, two.url, "w-2", 0.1, lines),
    ):
        async with client(one) as http_one, client(two) as http_two:
            sending = [
                asyncio.create_task(submit(http_one, "jobs/customer_report", {"customer_id": "k"}))
                for _ in range(12)
            ]
            await asyncio.wait(sending, return_when=asyncio.FIRST_COMPLETED)
            one.kill()
            answered = await asyncio.gather(*sending, return_exceptions=True)
            ids = [job_id for job_id in answered if isinstance(job_id, str)]
            assert ids
            ended = await asyncio.gather(
                *(terminal(http_two, job_id, within_s=90) for job_id in ids)
            )
            assert {job["status"] for job in ended} == {"finished"}
            spans = timeline(lines)
            assert most_at_once([spans[job_id] for job_id in ids]) <= LIMIT
