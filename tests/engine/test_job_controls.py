"""Job controls (events into listen states) in process, with two orchestrators racing, on
the embedded store, a real Redis and a Redis Cluster."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Mapping
from pathlib import Path

import pytest

from engine.runtime import background
from engine.runtime.controls import InvalidPayload
from engine.runtime.jobdoc import Ignored, RuntimeSettings
from engine.runtime.orchestrator import Orchestrator
from tests.engine.test_orchestrator import events, finished, orchestrator, run_task
from tests.engine.test_webhooks_schedules import eventually, receiver, running, wait_for

pytestmark = pytest.mark.timeout(60)

LISTEN = """
blueprint: listening
start: hear
states:
  hear:
    listen:
      event: go
      schema: {type: object, required: [n], properties: {n: {type: integer}}}
      timeout: {timeout}
    on: {received: work, timeout: late}
  work:
    task: echo
    params: {n: "${ steps.hear.n }"}
    on: {success: done}
  done: {end: finished, output: {n: "${ steps.work.n }"}}
  late: {end: failed, error: {code: LATE}}
"""


@pytest.fixture(params=["memory", "redis", "cluster"])
def url(request: pytest.FixtureRequest) -> str:
    if request.param == "memory":
        return "memory://"
    found: str = request.getfixturevalue(f"{request.param}_url")
    return found


@contextlib.asynccontextmanager
async def two(
    url: str, tmp_path: Path, text: str
) -> AsyncIterator[tuple[Orchestrator, Orchestrator]]:
    """Two orchestrators on one store (on memory://, one process: the same one twice)."""
    async with orchestrator(url, tmp_path, text) as first:
        if url.startswith("memory://"):
            yield first, first
            return
        async with orchestrator(url, tmp_path, text) as second:
            yield first, second


def listen(timeout: str = "1h") -> str:
    return LISTEN.replace("{timeout}", timeout)


async def test_one_of_many_racing_events_is_taken_and_the_job_goes_on(
    url: str, tmp_path: Path
) -> None:
    async with two(url, tmp_path, listen()) as (a, b):
        job_id = await a.submit(a.registry.by_name["listening"], {}, client="c")
        sends = [
            (a if i % 2 else b).controls.send_event(job_id, "c", "go", {"n": i}) for i in range(10)
        ]
        answers = await asyncio.gather(*sends)
        taken = [answer for answer in answers if isinstance(answer, dict)]
        assert len(taken) == 1
        assert sorted({str(a) for a in answers if isinstance(a, Ignored)}) == [
            str(Ignored("not_listening"))
        ]
        n = taken[0]["steps"]["hear"]["n"]
        task, _ = await run_task(a, "w1", "echo", lambda t: {"data": t["params"]})
        assert task["params"] == {"n": n}
        assert (await finished(b, job_id))["result"] == {"n": n}
        assert (await events(a, job_id)).count("event_received") == 1


async def test_a_bad_payload_raises_and_an_unknown_job_is_none(url: str, tmp_path: Path) -> None:
    async with orchestrator(url, tmp_path, listen()) as orch:
        job_id = await orch.submit(orch.registry.by_name["listening"], {}, client="c")
        with pytest.raises(InvalidPayload) as caught:
            await orch.controls.send_event(job_id, "c", "go", {"n": "one"})
        assert [p["path"] for p in caught.value.problems] == ["$.n"]
        assert await orch.controls.send_event(job_id, "other-client", "go", {"n": 1}) is None
        assert await orch.controls.send_event("0" * 32, "c", "go", {"n": 1}) is None
        doc = await orch.get_job(job_id, None)
        assert doc is not None
        assert doc["state"] == "hear"


async def test_the_timeout_takes_on_timeout(url: str, tmp_path: Path) -> None:
    async with orchestrator(url, tmp_path, listen("200ms")) as orch:
        job_id = await orch.submit(orch.registry.by_name["listening"], {}, client="c")
        doc = await finished(orch, job_id)
        assert (doc["status"], doc["error"]["code"]) == ("failed", "LATE")
        late = await orch.controls.send_event(job_id, "c", "go", {"n": 1})
        assert late == Ignored("not_listening")


TWO_STEPS = """
blueprint: two_steps
start: first
states:
  first:
    task: echo
    params: {n: 1}
    on: {success: second}
  second:
    task: echo
    params: {n: 2}
    on: {success: done}
  done: {end: finished, output: {first: "${ steps.first.n }", second: "${ steps.second.n }"}}
"""


async def test_a_result_during_a_pause_is_kept_and_the_job_goes_on_after_resume(
    url: str, tmp_path: Path
) -> None:
    async with two(url, tmp_path, TWO_STEPS) as (a, b):
        job_id = await a.submit(a.registry.by_name["two_steps"], {}, client="c")
        task = await a.next_task("w1", ("echo",), 5)
        assert task is not None
        pauses = await asyncio.gather(*(x.controls.pause(job_id, "c") for x in (a, b, a, b)))
        assert len([p for p in pauses if isinstance(p, dict)]) == 1
        assert [p for p in pauses if isinstance(p, Ignored)] == [Ignored("already_paused")] * 3
        reply = await b.submit_result(
            "w1", {"job_id": job_id, "task_id": task["task_id"], "data": {"n": 1}}
        )
        assert reply == {"status": "accepted"}
        assert await a.next_task("w1", ("echo",), 0.3) is None  # nothing new while paused
        doc = await b.get_job(job_id, None)
        assert doc is not None
        assert (doc["state"], doc["steps"]["first"]) == ("first", {"n": 1})
        resumed = await b.controls.resume(job_id, "c")
        assert isinstance(resumed, dict)
        assert resumed["state"] == "second"
        await run_task(a, "w1", "echo", lambda t: {"data": t["params"]})
        assert (await finished(a, job_id))["result"] == {"first": 1, "second": 2}


FAN = """
blueprint: fan
start: each
states:
  each:
    parallel:
      for_each: initial_data.items
      task: echo
      params: {n: "${ item }"}
      max_concurrency: 1
    on: {success: done}
  done: {end: finished, output: "${ steps.each[*].n }"}
"""


async def test_a_paused_for_each_launches_the_branches_it_held_on_resume(
    url: str, tmp_path: Path
) -> None:
    """The held branches' items are stored apart from the document: the resume reads them
    (on another orchestrator than the one that paused)."""
    async with two(url, tmp_path, FAN) as (a, b):
        job_id = await a.submit(a.registry.by_name["fan"], {"items": [1, 2, 3]}, client="c")
        task = await a.next_task("w1", ("echo",), 5)
        assert task is not None
        assert isinstance(await a.controls.pause(job_id, "c"), dict)
        reply = await b.submit_result(
            "w1", {"job_id": job_id, "task_id": task["task_id"], "data": task["params"]}
        )
        assert reply == {"status": "accepted"}
        assert await a.next_task("w1", ("echo",), 0.3) is None  # branch 2 waits for the resume
        assert isinstance(await b.controls.resume(job_id, "c"), dict)
        for _ in range(2):
            await run_task(a, "w1", "echo", lambda t: {"data": t["params"]})
        assert (await finished(a, job_id))["result"] == [1, 2, 3]


FAILING = """
blueprint: failing
start: work
states:
  work:
    task: echo
    retry: {max_attempts: 1}
    params: {n: "${ initial_data.n }"}
    on: {success: done, failure: broken}
  done: {end: finished, output: {n: "${ steps.work.n }"}}
  broken: {end: failed, error: {code: BROKEN}}
"""


async def test_a_redriven_job_no_longer_expires_and_other_orchestrators_see_it_run(
    url: str, tmp_path: Path
) -> None:
    async with two(url, tmp_path, FAILING) as (a, b):
        job_id = await a.submit(a.registry.by_name["failing"], {"n": 1}, client="c")
        task = await a.next_task("w1", ("echo",), 5)
        assert task is not None
        failure = {"status": "failure", "error": {"code": "PERMANENT_ERROR"}}
        await b.submit_result("w1", {"job_id": job_id, "task_id": task["task_id"], **failure})
        assert (await finished(b, job_id))["status"] == "failed"  # b remembers it ended
        key = a.store.keys.job(job_id)
        assert await a.store.redis.pttl(key) > 0  # kept for the retention, then gone

        answers = await asyncio.gather(
            *(a.controls.redrive(job_id, "c", patch={"n": 2}) for _ in range(3))
        )
        assert len([x for x in answers if isinstance(x, dict)]) == 1
        assert [x for x in answers if isinstance(x, Ignored)] == [Ignored("job_not_ended")] * 2
        assert await a.store.redis.pttl(key) == -1  # runs again: it no longer expires
        stored = await a.store.read_job(job_id)  # what every orchestrator reads, not a's memory
        assert stored is not None
        assert stored.doc["initial_data"] == {"n": 2}

        waiting = asyncio.create_task(b.wait_job(job_id, None, 10))
        await asyncio.sleep(0)  # (b's waiter registers before the job ends)
        task, _ = await run_task(a, "w1", "echo", lambda t: {"data": t["params"]})
        assert task["params"] == {"n": 2}
        doc = await waiting
        assert doc is not None
        assert (doc["status"], doc["result"]) == ("finished", {"n": 2})
        assert await a.store.redis.pttl(key) > 0


async def test_a_wait_woken_by_a_redrive_announcement_waits_on_for_the_end(
    url: str, tmp_path: Path
) -> None:
    """A redrive is announced on the channel that announces ends (so that orchestrators
    forget the end they remember); a `?wait` woken by it finds the job running: it waits on."""
    async with orchestrator(url, tmp_path, FAILING) as orch:
        job_id = await orch.submit(orch.registry.by_name["failing"], {"n": 1}, client="c")
        waiting = asyncio.create_task(orch.wait_job(job_id, None, 10))
        await wait_for(lambda: job_id in orch._done_waiters)
        orch.job_done(job_id)  # as when a redrive elsewhere is announced: nothing ended
        done, _ = await asyncio.wait({waiting}, timeout=1)
        assert not done, waiting.result()  # (before: answered at once, `queued`)
        await run_task(orch, "w1", "echo", lambda t: {"data": t["params"]})
        doc = await waiting
        assert doc is not None
        assert (doc["status"], doc["result"]) == ("finished", {"n": 1})


async def test_a_job_past_its_retention_cannot_be_redriven(url: str, tmp_path: Path) -> None:
    settings = RuntimeSettings(retention_ms=200)
    async with orchestrator(url, tmp_path, FAILING, settings=settings) as orch:
        job_id = await orch.submit(orch.registry.by_name["failing"], {"n": 1}, client="c")
        failure = {"status": "failure", "error": {"code": "PERMANENT_ERROR"}}
        await run_task(orch, "w1", "echo", lambda t: failure)
        assert (await finished(orch, job_id))["status"] == "failed"
        deadline = asyncio.get_running_loop().time() + 10
        while await orch.store.exists(job_id):  # its retention ends
            assert asyncio.get_running_loop().time() < deadline, "the job never expired"
            await asyncio.sleep(0.05)
        assert await orch.controls.redrive(job_id, "c") is None


async def test_a_job_redriven_before_its_webhook_went_out_sends_one_for_its_new_end(
    redis_url: str, tmp_path: Path
) -> None:
    """The job fails on an orchestrator that never delivers webhooks, and is redriven there;
    another orchestrator finds the failure's webhook in the outbox, but sends nothing until
    the job ends again, and then the webhook of that end."""
    async with receiver() as (hook, received):
        async with running(redis_url, tmp_path, [FAILING], send=False) as quiet:
            job_id = await quiet.submit(
                quiet.registry.by_name["failing"], {"n": 1}, client="c", webhook_url=hook
            )
            failure = {"status": "failure", "error": {"code": "PERMANENT_ERROR"}}
            await run_task(quiet, "w1", "echo", lambda t: failure)
            assert (await finished(quiet, job_id))["status"] == "failed"
            assert isinstance(await quiet.controls.redrive(job_id, "c"), dict)
        async with running(redis_url, tmp_path, [FAILING]) as sender:
            outbox = sender.store.keys.webhooks(sender.store.keys.partition(job_id))

            async def claimed() -> bool:  # its webhook loop has looked at the entry (and,
                # the job having been redriven since that end, dropped it)
                score = await sender.store.redis.zscore(outbox, job_id)
                return bool(received) or score is None or score > time.time() * 1000

            await eventually(claimed)
            await run_task(sender, "w1", "echo", lambda t: {"data": {"n": 3}})
            assert (await finished(sender, job_id))["status"] == "finished"
            await wait_for(lambda: received)
        assert [json.loads(body)["event"] for body, _ in received] == ["job_finished"]


async def test_an_earlier_ends_webhook_answered_after_the_job_ended_again_keeps_the_new_one(
    url: str, tmp_path: Path
) -> None:
    """The failure's webhook is on its way (the receiver has not answered yet) when the job
    is redriven and finishes. The earlier POST's outcome, recorded after that, must not take
    the new end's notification out of the outbox: the next turn sends it."""
    async with running(url, tmp_path, [FAILING], send=False) as orch:
        job_id = await orch.submit(
            orch.registry.by_name["failing"], {"n": 1}, client="c", webhook_url="http://hook/"
        )
        failure = {"status": "failure", "error": {"code": "PERMANENT_ERROR"}}
        await run_task(orch, "w1", "echo", lambda t: failure)
        assert (await finished(orch, job_id))["status"] == "failed"
        posted: list[str] = []
        arrived, answer = asyncio.Event(), asyncio.Event()

        async def slow_receiver(target: str, body: bytes, headers: Mapping[str, str]) -> int:
            posted.append(f"{json.loads(body)['event']} {headers['X-Interlock-Delivery']}")
            arrived.set()
            await answer.wait()
            return 200

        orch.webhook_sender = slow_receiver  # (its own loop stays off: turns are run here)
        first_turn = asyncio.create_task(background.deliver_due(orch))
        await arrived.wait()
        assert isinstance(await orch.controls.redrive(job_id, "c"), dict)
        await run_task(orch, "w1", "echo", lambda t: {"data": {"n": 3}})
        assert (await finished(orch, job_id))["status"] == "finished"
        answer.set()
        assert await first_turn == 1
        assert await background.deliver_due(orch) == 1
        # Each end its own delivery, attempts counted from 1.
        assert posted == [f"job_failed {job_id}-1", f"job_finished {job_id}-1"]
        assert await background.deliver_due(orch) == 0  # the outbox is empty


async def test_a_redrive_runs_the_blueprint_version_the_job_is_pinned_to(
    redis_url: str, tmp_path: Path
) -> None:
    """The job failed under version 1; the orchestrator that redrives it has loaded an
    edited blueprint (other params): the job runs its own version, new jobs the new one."""
    async with orchestrator(redis_url, tmp_path, FAILING) as old:
        job_id = await old.submit(old.registry.by_name["failing"], {"n": 1}, client="c")
        failure = {"status": "failure", "error": {"code": "PERMANENT_ERROR"}}
        await run_task(old, "w1", "echo", lambda t: failure)
        assert (await finished(old, job_id))["status"] == "failed"
    edited = FAILING.replace('params: {n: "${ initial_data.n }"}', "params: {n: edited}")
    async with orchestrator(redis_url, tmp_path, edited) as new:
        assert isinstance(await new.controls.redrive(job_id, "c"), dict)
        task, _ = await run_task(new, "w1", "echo", lambda t: {"data": t["params"]})
        assert task["params"] == {"n": 1}
        assert (await finished(new, job_id))["result"] == {"n": 1}
        fresh = await new.submit(new.registry.by_name["failing"], {"n": 1}, client="c")
        task, _ = await run_task(new, "w1", "echo", lambda t: {"data": t["params"]})
        assert (task["job_id"], task["params"]) == (fresh, {"n": "edited"})
