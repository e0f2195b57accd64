"""Flow control told through HTTP only: real `interlock serve` processes on a real Redis, real
worker processes, and a real HTTP receiver for webhooks.

Parallel fan-out and branches, approvals (by the owner and by the link), subflows, cancel in
every status a job can wait in, webhooks that survive the SIGKILL of the server that ended the
job, schedules on two servers, and a parallel join whose results reach two servers.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import shutil
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from engine.runtime.schedules import load_schedules
from engine.runtime.webhooks import verify
from tests.support.processes import CLIENT_TOKEN, ROOT, Server, serve, worker
from tests.support.redis_server import free_port

pytestmark = pytest.mark.timeout(120)

TERMINAL = ("finished", "failed", "cancelled")
SECRET = "e2e-webhook-secret"
Http = aiohttp.ClientSession


@contextlib.asynccontextmanager
async def client(server: Server, token: str = CLIENT_TOKEN) -> AsyncIterator[Http]:
    async with aiohttp.ClientSession(server.url, headers={"X-Client-Token": token}) as http:
        yield http


async def submit(http: Http, endpoint: str, data: dict[str, Any], **extra: Any) -> str:
    async with http.post(f"/api/v1/{endpoint}", json={"initial_data": data, **extra}) as resp:
        body = await resp.json()
        assert resp.status == 202, body
        job_id: str = body["job_id"]
        return job_id


async def view(http: Http, job_id: str, wait_s: float = 0) -> dict[str, Any]:
    params = {"wait": str(wait_s)} if wait_s else {}
    async with http.get(f"/api/v1/jobs/{job_id}", params=params) as resp:
        body: dict[str, Any] = await resp.json()
        assert resp.status == 200, body
        return body


async def until(what: str, check: Callable[[], Awaitable[Any]], within_s: float = 20) -> Any:
    """The first truthy value of `check()`, polled every 50 ms for up to `within_s`."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        value = await check()
        if value:
            return value
        await asyncio.sleep(0.05)
    raise AssertionError(f"{what}: not within {within_s} s")


async def in_status(http: Http, job_id: str, status: str) -> dict[str, Any]:
    async def check() -> dict[str, Any] | None:
        job = await view(http, job_id)
        return job if job["status"] == status else None

    found: dict[str, Any] = await until(f"job {job_id} {status}", check)
    return found


async def terminal(http: Http, job_id: str, within_s: float = 30) -> dict[str, Any]:
    deadline = time.monotonic() + within_s
    job = await view(http, job_id)
    while job["status"] not in TERMINAL:
        assert time.monotonic() < deadline, f"job {job_id} still {job['status']}"
        job = await view(http, job_id, wait_s=2)
    return job


async def events(http: Http, job_id: str) -> list[dict[str, Any]]:
    async with http.get(f"/api/v1/jobs/{job_id}/history") as resp:
        assert resp.status == 200
        found: list[dict[str, Any]] = (await resp.json())["events"]
        return found


def names(history: list[dict[str, Any]]) -> list[str]:
    return [event["event"] for event in history]


async def decide(http: Http, job_id: str, decision: str) -> tuple[int, dict[str, Any]]:
    async with http.post(f"/api/v1/jobs/{job_id}/approval", json={"decision": decision}) as resp:
        return resp.status, await resp.json()


async def decide_by_link(link: str, decision: str) -> tuple[int, dict[str, Any]]:
    """POST to an approval link as a person would: no client token at all."""
    async with (
        aiohttp.ClientSession() as anonymous,
        anonymous.post(link, json={"decision": decision}) as resp,
    ):
        return resp.status, await resp.json()


async def cancel(http: Http, job_id: str) -> tuple[int, dict[str, Any]]:
    async with http.post(f"/api/v1/jobs/{job_id}/cancel") as resp:
        return resp.status, await resp.json()


# -- the example blueprints --------------------------------------------------------------------

FLOW_SKILLS = (
    "resize_image,make_contact_sheet,ocr,extract_metadata,index_document,pay_expense,"
    "create_account,fetch_image,publish_image,send_email"
)
EXPENSE = {"amount": 12.5, "employee": "ada"}


async def test_the_flow_examples_run_to_their_expected_end(
    tmp_path: Path, any_redis_url: str
) -> None:
    """Given a server with the example blueprints and a worker for all their tasks, when a
    client runs each flow-control example, then each ends as its blueprint says."""
    with (
        serve(tmp_path, any_redis_url) as server,
        worker(tmp_path, server.url, "w-flow", FLOW_SKILLS, "--slots", "8"),
    ):
        async with client(server) as http:
            images = [f"https://img.test/{i}.png" for i in range(25)]
            fanout = await submit(http, "jobs/batch_thumbnails", {"images": images})
            branches = await submit(http, "jobs/document_intake", {"document": "doc-7"})
            by_api = await submit(http, "jobs/expense_approval", EXPENSE)
            by_link = await submit(http, "jobs/expense_approval", {**EXPENSE, "employee": "bo"})
            rejected = await submit(http, "jobs/expense_approval", {**EXPENSE, "amount": 9e6})
            onboarding = await submit(
                http, "jobs/onboarding", {"user": "ada", "avatar_url": "https://img.test/a.png"}
            )

            # parallel_fanout.yaml: 25 branches (at most 20 at a time), joined once
            job = await terminal(http, fanout)
            assert job["status"] == "finished", job
            assert job["result"] == {"sheet": "/tmp/interlock-test.png", "count": 25}
            history = await events(http, fanout)
            assert names(history).count("branch_ended") == 25
            assert names(history).count("parallel_joined") == 1
            started = [e for e in history if e["event"] == "task_queued"]
            assert len([e for e in started if e["state"] == "resize_all"]) == 25

            # parallel_branches.yaml: both branches, joined by name
            job = await terminal(http, branches)
            assert job["status"] == "finished", job
            assert job["result"]["meta"]["document"] == "doc-7"

            # approval.yaml: approved by the owner through the API
            waiting = await in_status(http, by_api, "waiting_for_human")
            assert waiting["approval"]["message"] == "Approve 12.5 for ada?"
            status, body = await decide(http, by_api, "approve")
            assert status == 200, body
            assert body["state"] == "pay"
            job = await terminal(http, by_api)
            assert (job["status"], job["state"]) == ("finished", "paid")
            assert job["result"]["employee"] == "ada"

            # approval.yaml: approved by a person holding the link, without a client token
            link = (await in_status(http, by_link, "waiting_for_human"))["approval"]["link"]
            assert link.startswith(f"{server.url}/_public/approvals/{by_link}/")
            async with aiohttp.ClientSession() as anonymous, anonymous.get(link) as resp:
                assert resp.status == 200
                assert (await resp.json())["decisions"] == ["approve", "reject"]
            status, body = await decide_by_link(link, "approve")
            assert status == 200, body
            job = await terminal(http, by_link)
            assert (job["status"], job["result"]["employee"]) == ("finished", "bo")
            status, body = await decide_by_link(link, "approve")  # the link works once
            assert (status, body["error"]["code"]) == (404, "approval_not_found")

            # approval.yaml: rejected
            await in_status(http, rejected, "waiting_for_human")
            assert (await decide(http, rejected, "reject"))[0] == 200
            job = await terminal(http, rejected)
            assert (job["status"], job["error"]["code"]) == ("failed", "REJECTED")

            # subflow.yaml: the child runs image_pipeline; the parent resumes once, with its result
            job = await terminal(http, onboarding)
            assert (job["status"], job["state"]) == ("finished", "done"), job
            assert job["result"]["avatar"] == "https://example.test/x"
            history = await events(http, onboarding)
            assert names(history).count("subflow_ended") == 1
            [child_id] = [e["child_job_id"] for e in history if e["event"] == "subflow_started"]
            child = await view(http, child_id)
            assert (child["status"], child["blueprint"]) == ("finished", "image_pipeline")
            assert child["parent_job_id"] == onboarding


# -- cancel ------------------------------------------------------------------------------------


async def test_cancel_in_every_status_and_late_results_never_revive(
    tmp_path: Path, any_redis_url: str
) -> None:
    """Given jobs queued, running a leased task, in a parallel state, waiting, waiting for a
    person, and waiting for a child job, when each is cancelled, then each ends `cancelled`
    for good: results that arrive later are ignored and timers do nothing."""
    # The reminder waits an hour here (2 s in the example), so that it is still waiting when
    # cancelled however slow the machine. That a cancelled wait never moves on when its time
    # comes is a rule, checked on a fake clock in tests/engine/test_rules.py.
    folder = tmp_path / "blueprints"
    shutil.copytree(ROOT / "blueprints", folder)
    reminder = folder / "wait_and_set.yaml"
    reminder.write_text(reminder.read_text().replace("wait: 2s", "wait: 1h"))
    with (
        serve(tmp_path, any_redis_url, folder) as server,
        worker(tmp_path, server.url, "w-accounts", "create_account"),
        worker(
            tmp_path, server.url, "w-slow", "charge_card,ocr", "--slots", "2", "--delay", "3"
        ) as slow,
    ):
        async with client(server) as http:
            queued = await submit(http, "jobs/image_pipeline", {"url": "https://img.test/q"})
            leased = await submit(http, "jobs/charge", {"card_token": "tok", "amount": 5})
            fanned = await submit(http, "jobs/document_intake", {"document": "d"})
            waiting = await submit(http, "jobs/reminder", {"user": "ada"})
            human = await submit(http, "jobs/expense_approval", EXPENSE)
            parent = await submit(
                http, "jobs/onboarding", {"user": "ada", "avatar_url": "https://img.test/a"}
            )

            # Each job in the status it is to be cancelled in
            assert (await in_status(http, queued, "queued"))["task"]["status"] == "queued"

            async def leased_task(job_id: str) -> dict[str, Any] | None:
                job = await view(http, job_id)
                tasks = [t for t in job.get("tasks", []) if t["status"] == "leased"]
                return tasks[0] if tasks else None

            charge_task = await until("charge leased", lambda: leased_task(leased))
            ocr_task = await until("ocr leased", lambda: leased_task(fanned))
            assert (await view(http, fanned))["status"] == "running"
            assert (await in_status(http, waiting, "waiting"))["state"] == "pause"
            link = (await in_status(http, human, "waiting_for_human"))["approval"]["link"]

            async def child_of_parent() -> str | None:
                job = await view(http, parent)
                subflow = job.get("subflow")
                return subflow["child_job_id"] if job["status"] == "waiting" and subflow else None

            child = await until("subflow started", child_of_parent)
            assert (await in_status(http, child, "queued"))["parent_job_id"] == parent

            # When every one of them is cancelled
            jobs = [queued, leased, fanned, waiting, human, parent]
            for job_id in jobs:
                status, body = await cancel(http, job_id)
                assert status == 200, body
                assert body["status"] == "cancelled"
                assert body["error"]["code"] == "CANCELLED"

            # Then the child of the subflow is cancelled too
            assert (await in_status(http, child, "cancelled"))["error"]["code"] == "CANCELLED"
            # and a second cancel, a decision or the link cannot change anything
            status, body = await cancel(http, queued)
            assert (status, body["error"]["code"]) == (409, "job_not_cancellable")
            status, body = await decide(http, human, "approve")
            assert (status, body["error"]["code"]) == (409, "not_waiting_for_approval")
            status, body = await decide_by_link(link, "approve")
            assert (status, body["error"]["code"]) == (404, "approval_not_found")
            # and the results the slow worker sends late are ignored
            late_tasks = {charge_task["id"], ocr_task["id"]}
            slow.wait_for(f"result {charge_task['id']} ignored", timeout_s=15)
            slow.wait_for(f"result {ocr_task['id']} ignored", timeout_s=15)
            for job_id in [*jobs, child]:
                job = await view(http, job_id)
                assert job["status"] == "cancelled", job
                history = await events(http, job_id)
                assert names(history)[-1] == "job_cancelled", history
                assert names(history).count("job_cancelled") == 1
                late = [e for e in history if e.get("task_id") in late_tasks]
                assert "task_result" not in names(late)


# -- webhooks ----------------------------------------------------------------------------------


class Receiver:
    """A webhook receiver on a fixed port: down until started; then it answers the first
    call for each job with a 500, and later ones with a 200."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.calls: list[tuple[dict[str, str], bytes, int]] = []  # headers, body, our answer
        self.runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks/interlock"

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        job_id = json.loads(body)["job_id"]
        status = 200 if self.answers(job_id) else 500
        self.calls.append((dict(request.headers), body, status))
        return web.Response(status=status)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/hooks/interlock", self.handle)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()

    def answers(self, job_id: str) -> list[int]:
        """What we answered each call for the job, in order."""
        return [status for _, body, status in self.calls if json.loads(body)["job_id"] == job_id]

    def delivered(self, job_id: str) -> list[dict[str, Any]]:
        """The bodies of the 2xx-answered calls for a job, after checking their signatures."""
        found = []
        for headers, body, status in self.calls:
            payload = json.loads(body)
            if payload["job_id"] != job_id or status != 200:
                continue
            assert verify(SECRET, headers["X-Interlock-Signature"], body)
            assert not verify("another-secret", headers["X-Interlock-Signature"], body)
            assert not verify(SECRET, headers["X-Interlock-Signature"], body + b" ")
            assert headers["X-Interlock-Event"] == payload["event"]
            found.append({**payload, "delivery": headers["X-Interlock-Delivery"]})
        return found


async def test_webhooks_are_signed_and_survive_a_sigkill(
    tmp_path: Path, any_redis_url: str
) -> None:
    """Given a receiver that is down, when server A ends a job with a webhook and is then
    SIGKILLed, then server B on the same Redis delivers it, signed, once the receiver is up
    (through a first 500); jobs ended on B are delivered too."""
    receiver = Receiver(free_port())
    # The receiver is on 127.0.0.1, which webhooks may reach only when allowed.
    env = {"WEBHOOK_SECRET": SECRET, "WEBHOOK_ALLOW": "127.0.0.1"}
    try:
        with serve(tmp_path, any_redis_url, env=env) as first:
            async with client(first) as http:
                ended_on_a = await submit(
                    http, "jobs/expense_approval", EXPENSE, webhook_url=receiver.url
                )
                await in_status(http, ended_on_a, "waiting_for_human")
                assert (await decide(http, ended_on_a, "reject"))[0] == 200
                assert (await view(http, ended_on_a))["status"] == "failed"

            async def attempted() -> bool:
                # The log shows the receiver's origin only: paths may hold secrets.
                origin = f"http://127.0.0.1:{receiver.port}/..."
                return f"webhook for job {ended_on_a} to {origin} failed" in first.output()

            await until("server A tried the webhook", attempted, 10)
            first.kill()  # within the 1 s backoff: the retry is left to whoever comes next
        assert not receiver.calls

        await receiver.start()
        with (
            serve(tmp_path, any_redis_url, env=env) as second,
            worker(tmp_path, second.url, "w-pay", "pay_expense"),
        ):
            async with client(second) as http:
                finished = await submit(
                    http, "jobs/expense_approval", EXPENSE, webhook_url=receiver.url
                )
                cancelled = await submit(
                    http, "jobs/expense_approval", EXPENSE, webhook_url=receiver.url
                )
                await in_status(http, finished, "waiting_for_human")
                assert (await decide(http, finished, "approve"))[0] == 200
                assert (await terminal(http, finished))["status"] == "finished"
                assert (await cancel(http, cancelled))[0] == 200

                async def all_delivered() -> bool:
                    return all(receiver.delivered(j) for j in (ended_on_a, finished, cancelled))

                await until("every webhook delivered", all_delivered, 20)
    finally:
        await receiver.stop()

    [from_a] = receiver.delivered(ended_on_a)
    assert (from_a["event"], from_a["status"]) == ("job_failed", "failed")
    assert from_a["error"]["code"] == "REJECTED"
    # A's attempt was refused; B's first was answered 500, its retry (with backoff) 200
    assert receiver.answers(ended_on_a) == [500, 200]
    assert int(from_a["delivery"].rsplit("-", 1)[1]) >= 3
    [done] = receiver.delivered(finished)
    assert (done["event"], done["state"]) == ("job_finished", "paid")
    assert done["result"]["employee"] == "ada"
    assert done["delivery"] == f"{finished}-2"
    [gone] = receiver.delivered(cancelled)
    assert (gone["event"], gone["delivery"]) == ("job_cancelled", f"{cancelled}-2")
    assert receiver.answers(cancelled) == [500, 200]


# -- schedules ---------------------------------------------------------------------------------

SCHEDULES = """\
[reminders]
blueprint = "reminder"
every = "1s"
initial_data = {user = "cron"}

[expenses]
blueprint = "expense_approval"
every = "1s"
client = "finance"
initial_data = {amount = 1, employee = "cron"}
"""
CLIENTS = """\
[scheduler]
token = "scheduler-token"

[finance]
token = "finance-token"
"""


def _tick_of(job_id: str, created_at: str, schedule_job_id: Callable[[datetime], str]) -> int:
    """The tick (unix second) a scheduled job was started for, found from its id."""
    created = datetime.fromisoformat(created_at.replace("Z", "+00:00")).timestamp()
    for second in range(int(created) + 1, int(created) - 30, -1):
        if schedule_job_id(datetime.fromtimestamp(second, UTC)) == job_id:
            return second
    raise AssertionError(f"job {job_id} is not a tick of the schedule")


async def test_a_schedule_on_two_servers_starts_one_job_per_tick(
    tmp_path: Path, any_redis_url: str
) -> None:
    schedules = tmp_path / "schedules.toml"
    schedules.write_text(SCHEDULES)
    clients = tmp_path / "clients.toml"
    clients.write_text(CLIENTS)
    by_name = {s.name: s for s in load_schedules(schedules, {"reminder", "expense_approval"})}
    env = {"SCHEDULES_CONFIG_PATH": str(schedules), "CLIENTS_CONFIG_PATH": str(clients)}
    tokens = {"reminders": "scheduler-token", "expenses": "finance-token"}
    blueprints = {"reminders": "reminder", "expenses": "expense_approval"}
    with (
        serve(tmp_path, any_redis_url, env=env) as first,
        serve(tmp_path, any_redis_url, env=env) as second,
    ):

        async def scheduled(name: str) -> list[dict[str, Any]]:
            async with (
                client(second, tokens[name]) as http,
                http.get("/api/v1/jobs", params={"blueprint": blueprints[name]}) as resp,
            ):
                assert resp.status == 200
                jobs: list[dict[str, Any]] = (await resp.json())["jobs"]
            return jobs

        async def three_ticks_logged() -> dict[str, list[dict[str, Any]]] | None:
            """Each schedule's jobs once three ticks have run, and each job's start is in
            a server's log (the log line follows the job's creation)."""
            found = {name: await scheduled(name) for name in tokens}
            logs = first.output() + second.output()
            if all(
                len(jobs) >= 3 and all(f"started job {j['id']} " in logs for j in jobs)
                for jobs in found.values()
            ):
                return found
            return None

        found = await until("three ticks of each schedule", three_ticks_logged)
        logs = first.output() + second.output()
        for name, jobs in found.items():
            async with client(second, tokens[name]) as http:
                ticks = sorted(
                    _tick_of(j["id"], j["created_at"], by_name[name].job_id) for j in jobs
                )
                # one job per tick, and no tick left out
                assert ticks == list(range(ticks[0], ticks[0] + len(ticks))), (name, ticks)
                for job in jobs:
                    # created once, by one of the two servers
                    assert logs.count(f"started job {job['id']} ") == 1, (name, job["id"])
                    assert names(await events(http, job["id"])).count("job_created") == 1
            # The schedule's client owns its jobs: nobody else sees them
            async with (
                client(first) as default,
                default.get("/api/v1/jobs", params={"blueprint": blueprints[name]}) as resp,
            ):
                assert (await resp.json())["jobs"] == []
        started = re.findall(r"schedule (\w+) started job", logs)
        assert set(started) == {"reminders", "expenses"}


# -- parallel join and subflow across two servers ---------------------------------------------


async def test_results_arriving_at_two_servers_join_once(tmp_path: Path, redis_url: str) -> None:
    """Given two servers and a worker on each, when a fan-out's branch results reach both
    servers, then the join runs once; a subflow whose child ends on the other server
    resumes its parent once."""
    with (
        serve(tmp_path, redis_url) as first,
        serve(tmp_path, redis_url) as second,
        worker(
            tmp_path,
            first.url,
            "w-a",
            "resize_image,make_contact_sheet,create_account,send_email",
            "--slots",
            "4",
            "--delay",
            "0.05",
        ) as on_first,
        worker(
            tmp_path,
            second.url,
            "w-b",
            "resize_image,make_contact_sheet,fetch_image,publish_image",
            "--slots",
            "4",
            "--delay",
            "0.05",
        ) as on_second,
    ):
        for process in (on_first, on_second):
            process.wait_for("registered")
        async with client(first) as http:
            images = [f"https://img.test/{i}.png" for i in range(60)]
            fanout = await submit(http, "jobs/batch_thumbnails", {"images": images})
            parent = await submit(
                http, "jobs/onboarding", {"user": "ada", "avatar_url": "https://img.test/a.png"}
            )
            job = await terminal(http, fanout)
            assert job["status"] == "finished", job
            assert job["result"]["count"] == 60
            history = await events(http, fanout)
            assert names(history).count("parallel_joined") == 1
            assert names(history).count("job_finished") == 1
            ended = [e["branch"] for e in history if e["event"] == "branch_ended"]
            assert sorted(ended) == list(range(60))
            workers = {
                e["worker"]
                for e in history
                if e["event"] == "task_result" and e["state"] == "resize_all"
            }
            assert workers == {"w-a", "w-b"}  # results reached both servers

            job = await terminal(http, parent)
            assert (job["status"], job["result"]["avatar"]) == (
                "finished",
                "https://example.test/x",
            )
            history = await events(http, parent)
            assert names(history).count("subflow_ended") == 1
            assert names(history).count("job_finished") == 1
            [child] = [e["child_job_id"] for e in history if e["event"] == "subflow_started"]
            child_history = await events(http, child)
            last_task = [e for e in child_history if e["event"] == "task_result"][-1]
            assert (last_task["state"], last_task["worker"]) == ("publish", "w-b")
