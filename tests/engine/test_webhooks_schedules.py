"""Webhook delivery (signed, retried, at least once) and schedules (one job per tick)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar
from zoneinfo import ZoneInfo

import aiohttp
import pytest
from aiohttp import web

from engine.blueprint.loader import load_blueprints
from engine.runtime import background, webhooks
from engine.runtime.jobdoc import RuntimeSettings
from engine.runtime.orchestrator import Orchestrator, OrchestratorSettings
from engine.runtime.registry import Registry
from engine.runtime.schedules import Schedule, ScheduleError, load_schedules
from engine.store.client import Store
from tests.engine.test_orchestrator import LINEAR, finished, run_task
from tests.support.redis_server import free_port

SECRET = "webhook-secret"
T = TypeVar("T")
SET_ONLY = "blueprint: tick\nstart: s\nstates:\n  s: {set: {a: 1}, next: e}\n  e: {end: finished}\n"


@asynccontextmanager
async def receiver(
    fail_first: int = 0,
) -> AsyncIterator[tuple[str, list[tuple[bytes, dict[str, str]]]]]:
    received: list[tuple[bytes, dict[str, str]]] = []
    calls = 0

    async def hook(request: web.Request) -> web.Response:
        nonlocal calls
        calls += 1
        body = await request.read()
        if calls <= fail_first:
            return web.Response(status=500)
        received.append((body, dict(request.headers)))
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_post("/hook", hook)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield f"http://127.0.0.1:{port}/hook", received
    finally:
        await runner.cleanup()


@asynccontextmanager
async def running(
    url: str,
    tmp_path: Path,
    texts: list[str],
    *,
    send: bool = True,
    schedules: list[Schedule] | None = None,
) -> AsyncIterator[Orchestrator]:
    folder = tmp_path / f"bp{id(texts)}{send}{len(schedules or [])}"
    folder.mkdir(exist_ok=True)
    for i, text in enumerate(texts):
        (folder / f"b{i}.yaml").write_text(text)
    store = await Store.connect(url, partitions=4)
    async with aiohttp.ClientSession() as http:

        async def sender(target: str, body: bytes, headers: Mapping[str, str]) -> int:
            async with http.post(target, data=body, headers=dict(headers)) as resp:
                return resp.status

        orch = Orchestrator(
            store,
            Registry(load_blueprints([folder]), RuntimeSettings()),
            OrchestratorSettings(timer_interval_s=0.02, webhook_secret=SECRET),
            webhook_sender=sender if send else None,
            schedules=schedules or [],
        )
        await orch.start()
        try:
            yield orch
        finally:
            await orch.stop()
            await store.close()


async def wait_for(predicate: object, seconds: float = 10) -> None:
    for _ in range(int(seconds * 20)):
        if callable(predicate) and predicate():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("condition not met in time")


async def eventually(check: Callable[[], Awaitable[T]], seconds: float = 10) -> T:
    """The first truthy value of `check()`, asked every 50 ms until the deadline."""
    for _ in range(int(seconds * 20)):
        if value := await check():
            return value
        await asyncio.sleep(0.05)
    raise AssertionError("condition not met in time")


async def test_a_finished_job_posts_a_signed_webhook(store_url: str, tmp_path: Path) -> None:
    async with receiver() as (url, received), running(store_url, tmp_path, [LINEAR]) as orch:
        job_id = await orch.submit(
            orch.registry.by_name["linear"], {"n": 2}, client="c", webhook_url=url
        )
        await run_task(orch, "w", "echo", lambda t: {"data": t["params"]})
        await finished(orch, job_id)
        await wait_for(lambda: received)
        body, headers = received[0]
        assert webhooks.verify(SECRET, headers["X-Interlock-Signature"], body)
        assert not webhooks.verify("wrong-secret", headers["X-Interlock-Signature"], body)
        assert headers["X-Interlock-Event"] == "job_finished"
        payload = json.loads(body)
        assert payload["job_id"] == job_id
        assert payload["result"] == {"n": 2}


async def test_a_failed_delivery_is_retried(store_url: str, tmp_path: Path) -> None:
    async with (
        receiver(fail_first=1) as (url, received),
        running(store_url, tmp_path, [SET_ONLY]) as orch,
    ):
        job_id = await orch.submit(orch.registry.by_name["tick"], {}, client="c", webhook_url=url)
        await finished(orch, job_id)
        await wait_for(lambda: received, 15)
        assert received[0][1]["X-Interlock-Delivery"] == f"{job_id}-2"


async def test_a_webhook_survives_the_orchestrator_that_finished_the_job(
    redis_url: str, tmp_path: Path
) -> None:
    """The job ends on an orchestrator that never delivers (as if it died right after the
    commit); another orchestrator delivers from the outbox."""
    async with receiver() as (url, received):
        async with running(redis_url, tmp_path, [SET_ONLY], send=False) as doomed:
            job_id = await doomed.submit(
                doomed.registry.by_name["tick"], {}, client="c", webhook_url=url
            )
            await finished(doomed, job_id)
        assert received == []
        async with running(redis_url, tmp_path, [SET_ONLY]):
            await wait_for(lambda: received)
        assert json.loads(received[0][0])["job_id"] == job_id


async def test_every_tick_starts_exactly_one_job_across_orchestrators(
    redis_url: str, tmp_path: Path
) -> None:
    """Two orchestrators walk the same (fake) clock concurrently, in uneven steps: each tick
    gets one job, created by exactly one of them."""
    every = Schedule(
        name="often", blueprint="tick", initial_data={"x": 1}, zone=ZoneInfo("UTC"), every_s=1.0
    )
    origin = datetime(2026, 1, 1, tzinfo=UTC)
    end = origin + timedelta(seconds=10)

    async def walk(orch: Orchestrator, step_ms: int) -> list[str]:
        created: list[str] = []
        last = origin
        while last < end:
            now = min(end, last + timedelta(milliseconds=step_ms))
            created += await background.start_scheduled(orch, last, now)
            last = now
        return created

    async with (
        running(redis_url, tmp_path, [SET_ONLY]) as a,
        running(redis_url, tmp_path, [SET_ONLY]) as b,
    ):
        a.schedules = b.schedules = (every,)  # driven by hand, not by their loops
        by_a, by_b = await asyncio.gather(walk(a, 300), walk(b, 700))
        jobs, _ = await a.list_jobs("scheduler", status=None, blueprint="tick", limit=200)
        histories = [await a.history(job["id"], "scheduler") or [] for job in jobs]
    expected = {every.job_id(origin + timedelta(seconds=s)) for s in range(1, 11)}
    assert sorted(by_a + by_b) == sorted(expected)  # every tick once, none twice
    assert {job["id"] for job in jobs} == expected
    assert all([e["event"] for e in h].count("job_created") == 1 for h in histories)


async def test_the_schedule_loop_catches_up_on_the_latest_missed_tick(
    redis_url: str, tmp_path: Path
) -> None:
    """The wiring: a started orchestrator runs its schedules by itself; its first turn
    starts the job of the latest tick at once, not the older ones it missed."""
    minutely = Schedule(
        name="minutely", blueprint="tick", initial_data={}, zone=ZoneInfo("UTC"), every_s=60
    )
    before = datetime.now(UTC)
    async with running(redis_url, tmp_path, [SET_ONLY], schedules=[minutely]) as orch:

        async def started() -> list[dict[str, Any]]:
            jobs, _ = await orch.list_jobs("scheduler", status=None, blueprint="tick", limit=9)
            return jobs

        found = await eventually(started)
        after = datetime.now(UTC)
    # The latest tick when the loop started (a minute may turn meanwhile: then the next one).
    allowed = {minutely.job_id(t) for t in minutely.ticks(before - timedelta(minutes=1), after)}
    assert len(found) == 1
    assert found[0]["id"] in allowed


def test_cron_ticks_follow_the_timezone() -> None:
    daily = Schedule(
        name="d", blueprint="b", initial_data={}, zone=ZoneInfo("Europe/Berlin"), cron="0 2 * * *"
    )
    ticks = daily.ticks(datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 1, 3, tzinfo=UTC))
    assert ticks == [datetime(2026, 1, 1, 1, tzinfo=UTC), datetime(2026, 1, 2, 1, tzinfo=UTC)]
    assert daily.job_id(ticks[0]) != daily.job_id(ticks[1])
    assert daily.job_id(ticks[0]) == daily.job_id(datetime(2026, 1, 1, 1, tzinfo=UTC))


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ('[a]\nblueprint = "nope"\ncron = "* * * * *"\n', "blueprint 'nope' is not loaded"),
        ('[a]\nblueprint = "tick"\ncron = "61 * * * *"\n', "not a valid cron expression"),
        ('[a]\nblueprint = "tick"\nevery = "5 minutes"\n', "is not a duration"),
        ('[a]\nblueprint = "tick"\n', "exactly one of cron"),
        ('[a]\nblueprint = "tick"\nevery = "1m"\ntimezone = "Mars/Base"\n', "unknown timezone"),
        ('[a]\nblueprint = "tick"\nevery = "1m"\ncolour = 1\n', "unknown key 'colour'"),
        ("[a\nblueprint = 1\n", "line 1"),
    ],
)
def test_bad_schedules_name_the_file_table_and_fix(
    tmp_path: Path, text: str, fragment: str
) -> None:
    path = tmp_path / "schedules.toml"
    path.write_text(text)
    with pytest.raises(ScheduleError) as caught:
        load_schedules(path, {"tick"})
    assert str(path) in str(caught.value)
    assert fragment in str(caught.value)
