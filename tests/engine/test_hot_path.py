"""The engine's fast path: group commit, direct hand-off, batch polls, remembered jobs,
batched heartbeats. Each test checks the outcome and what it cost in Redis commands."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from engine.jsonutil import dumps
from engine.runtime.orchestrator import Orchestrator, OrchestratorSettings
from engine.store.client import Commit, Store, StoreUnavailable
from tests.conftest import require_program
from tests.engine.test_orchestrator import LINEAR, finished, orchestrator
from tests.support.redis_server import RedisServer
from tests.worker_sdk.support import eventually

NOOP = """
blueprint: noop
start: compute
states:
  compute: {set: {doubled: "${ initial_data.n }"}, next: done}
  done: {end: finished}
"""


async def command_calls(url: str) -> dict[str, int]:
    """Calls per command so far (INFO commandstats), Lua's own commands included."""
    client = aioredis.Redis.from_url(url)
    try:
        stats = await client.info("commandstats")
    finally:
        await client.aclose()
    return {name.removeprefix("cmdstat_"): int(row["calls"]) for name, row in stats.items()}


def spent(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    used = {name: after[name] - before.get(name, 0) for name in after}
    used.pop("info", None)
    return {name: n for name, n in used.items() if n}


async def submit(orch: Orchestrator, n: int) -> str:
    blueprint = orch.registry.current("linear")
    assert blueprint is not None
    return await orch.submit(blueprint, {"n": n}, client="c")


async def answer_all(orch: Orchestrator, worker: str, tasks: list[dict[str, Any]]) -> None:
    replies = await asyncio.gather(
        *(
            orch.submit_result(
                worker, {"job_id": t["job_id"], "task_id": t["task_id"], "data": t["params"]}
            )
            for t in tasks
        )
    )
    assert replies == [{"status": "accepted"}] * len(tasks)


async def test_concurrent_commits_share_scripts_and_each_lands(
    redis_url: str, tmp_path: Path
) -> None:
    async with orchestrator(redis_url, tmp_path, LINEAR) as orch:
        await submit(orch, 0)  # loads the scripts
        before = await command_calls(redis_url)
        job_ids = await asyncio.gather(*(submit(orch, n) for n in range(1, 41)))
        used = spent(before, await command_calls(redis_url))
        assert len(set(job_ids)) == 40
        records = await asyncio.gather(*(orch.store.read_job(j) for j in job_ids))
        assert [r.doc["initial_data"]["n"] for r in records if r] == list(range(1, 41))
        # 40 creations went to Redis in a few batches, not in 40 scripts.
        assert used.get("evalsha", 0) < 20, used
        assert used["hset"] == 40, used


async def test_a_refused_change_does_not_sink_its_batch(redis_url: str) -> None:
    store = await Store.connect(redis_url, partitions=1)
    try:

        def create(job_id: str) -> Commit:
            return Commit(job_id=job_id, expected_version=None, fields={"v": "1", "doc": "{}"})

        assert await store.commit(create("a"), history_start=0)
        outcomes = await asyncio.gather(
            store.commit(create("a"), history_start=0),  # exists already: refused
            store.commit(create("b"), history_start=0),
            store.commit(
                Commit(job_id="a", expected_version=7, fields={"v": "8", "doc": "{}"}),
                history_start=0,
            ),  # wrong version: refused
            store.commit(create("c"), history_start=0),
        )
        assert list(outcomes) == [False, True, False, True]
        assert (await store.redis.hget(store.keys.job("a"), "v")) == "1"
    finally:
        await store.close()


async def test_a_task_for_an_open_poll_is_leased_in_its_creating_commit(
    redis_url: str, tmp_path: Path
) -> None:
    # The timer loop runs once at start, then not again during the test: its scripts would
    # count as this commit's.
    quiet = OrchestratorSettings(timer_interval_s=3600)
    async with orchestrator(redis_url, tmp_path, LINEAR, orch_settings=quiet) as orch:
        # Redis knows the commit script already (as it would after the first job), so the
        # count below has no NOSCRIPT round of loading it.
        await orch.store.redis.script_load(orch.store._commit.script)
        poll = asyncio.create_task(orch.next_tasks("w1", ("echo",), 5, 10))
        await eventually(  # the poll is waiting, past its first queue peek
            lambda: any(not w.queue_first for w in orch.dispatcher.waiters.get("echo", [])),
            what="the poll waits for hand-offs",
        )
        before = await command_calls(redis_url)
        job_id = await submit(orch, 7)
        tasks = await poll
        used = spent(before, await command_calls(redis_url))
        assert [t["job_id"] for t in tasks] == [job_id]
        assert tasks[0]["params"] == {"n": 7}
        # No queue, no dispatcher peek, no lease script: one commit did it all. (A timer or
        # webhook sweep that fell in the window is one EVALSHA with one ZRANGEBYSCORE per
        # partition: leave those out.)
        assert "zrange" not in used, used
        sweeps = used.get("zrangebyscore", 0) // orch.store.keys.partitions
        assert used.get("evalsha", 0) - sweeps == 1, used
        record = await orch.store.read_job(job_id)
        assert record is not None
        assert record.leases[tasks[0]["task_id"]].startswith("l|")
        partition = orch.store.keys.partition(job_id)
        assert await orch.store.peek_many([("echo", partition, 10)]) == [[]]
        await answer_all(orch, "w1", tasks)
        assert (await finished(orch, job_id))["result"] == {"n": 7}


async def test_one_poll_takes_several_queued_tasks(store_url: str, tmp_path: Path) -> None:
    async with orchestrator(store_url, tmp_path, LINEAR) as orch:
        job_ids = [await submit(orch, n) for n in range(6)]  # queued: nobody polls yet
        tasks = await orch.next_tasks("w1", ("echo",), 5, 4)
        assert 1 <= len(tasks) <= 4
        seen = [t["job_id"] for t in tasks]
        while len(seen) < 6:
            more = await orch.next_tasks("w1", ("echo",), 5, 4)
            assert more, "queued tasks left behind"
            tasks += more
            seen += [t["job_id"] for t in more]
        assert sorted(seen) == sorted(job_ids)  # each once
        await answer_all(orch, "w1", tasks)
        for job_id in job_ids:
            assert (await finished(orch, job_id))["status"] == "finished"


async def test_a_poll_that_times_out_with_nothing_answers_empty(
    store_url: str, tmp_path: Path
) -> None:
    async with orchestrator(store_url, tmp_path, LINEAR) as orch:
        assert await orch.next_tasks("w1", ("echo",), 0.1, 5) == []


async def test_a_wait_on_a_job_that_ends_here_reads_nothing(redis_url: str, tmp_path: Path) -> None:
    async with orchestrator(redis_url, tmp_path, LINEAR) as orch:
        job_id = await submit(orch, 3)
        tasks = await orch.next_tasks("w1", ("echo",), 5, 1)
        before = await command_calls(redis_url)
        waiting = asyncio.create_task(orch.read(job_id, "c", 5))
        await eventually(lambda: job_id in orch._done_waiters, what="the read waits")
        await answer_all(orch, "w1", tasks)
        record = await waiting
        used = spent(before, await command_calls(redis_url))
        assert record is not None
        assert record.doc["status"] == "finished"
        assert record.doc["result"] == {"n": 3}
        assert "hmget" not in used, used
        assert "hget" in used, used  # the commit's guard only
        assert await orch.read(job_id, "someone-else", 1) is None


async def test_a_wait_on_a_job_that_ended_here_reads_only_its_version(
    redis_url: str, tmp_path: Path
) -> None:
    """A `?wait` on a job this orchestrator ended answers with the job as committed once
    the stored version shows nothing changed it since; when something did (a redrive
    elsewhere, not announced here yet), with what Redis holds."""
    async with orchestrator(redis_url, tmp_path, LINEAR) as orch:
        job_id = await submit(orch, 3)
        await answer_all(orch, "w1", await orch.next_tasks("w1", ("echo",), 5, 1))
        assert (await finished(orch, job_id))["status"] == "finished"
        before = await command_calls(redis_url)
        record = await orch.read(job_id, "c", 5)
        used = spent(before, await command_calls(redis_url))
        used.pop("hello", None)  # a connection opened by the counting itself
        used.pop("zrangebyscore", None)  # the timer loop's look, by the clock
        assert record is not None
        assert record.doc["result"] == {"n": 3}
        assert used == {"hget": 1}, used
        # changed elsewhere: the stored version moved on
        key = orch.store.keys.job(job_id)
        stored = json.loads(str(await orch.store.redis.hget(key, "doc")))
        await orch.store.redis.hset(
            key, mapping={"doc": json.dumps({**stored, "status": "running"}), "v": 99}
        )
        record = await orch.read(job_id, "c", 0.2)
        assert record is not None
        assert (record.version, record.doc["status"]) == (99, "running")


async def test_a_job_changed_elsewhere_is_decided_on_what_redis_holds(
    redis_url: str, tmp_path: Path
) -> None:
    """One orchestrator remembers a job; another takes it further. The first must not
    answer from what it remembers."""
    async with (
        orchestrator(redis_url, tmp_path, LINEAR) as a,
        orchestrator(redis_url, tmp_path, LINEAR) as b,
    ):
        job_id = await submit(a, 1)  # a remembers it with its task queued
        tasks = await b.next_tasks("w1", ("echo",), 5, 1)  # leased through b
        assert [t["job_id"] for t in tasks] == [job_id]
        # a's memory says "queued", which would make it refuse the result as not leased.
        await answer_all(a, "w1", tasks)
        doc = await a.wait_job(job_id, "c", 5)
        assert doc is not None
        assert doc["status"] == "finished"
        # and b, which did not end it, hears of it through the `done` announcement
        doc = await b.wait_job(job_id, "c", 5)
        assert doc is not None
        assert doc["status"] == "finished"


async def test_concurrent_heartbeats_share_round_trips(redis_url: str) -> None:
    store = await Store.connect(redis_url, partitions=2)
    try:
        for n in range(200):
            await store.register_worker(f"w{n}", {"worker_id": f"w{n}"}, 60_000)
        await store.request_cancel("w5", "t-1", 60_000)
        before = await command_calls(redis_url)
        answers = await asyncio.gather(
            *(store.heartbeat(f"w{n}", [f"t{n}"], 10_000, 60_000) for n in range(200)),
            store.heartbeat("stranger", [], 10_000, 60_000),
        )
        used = spent(before, await command_calls(redis_url))
        assert answers[5] == (True, ["t-1"])
        assert all(a == (True, []) for i, a in enumerate(answers[:200]) if i != 5)
        assert answers[200] == (False, [])
        assert used["set"] == 201, used
        assert used["spop"] == 201, used
        alive = await store.worker_alive("w9")
        assert alive is not None
        assert alive["tasks"] == ["t9"]
        clients = await store.redis.client_list()
        assert len(clients) <= 10  # one pool of at most 10 (this test's INFO aside)
    finally:
        await store.close()


async def test_big_integers_survive_a_job(store_url: str, tmp_path: Path) -> None:
    """orjson cannot write integers beyond 64 bits; the codec falls back, losslessly."""
    async with orchestrator(store_url, tmp_path, LINEAR) as orch:
        blueprint = orch.registry.current("linear")
        assert blueprint is not None
        big = 2**70 + 1
        job_id = await orch.submit(blueprint, {"n": big}, client="c")
        tasks = await orch.next_tasks("w1", ("echo",), 5, 1)
        assert tasks[0]["params"] == {"n": big}
        await answer_all(orch, "w1", tasks)
        doc = await finished(orch, job_id)
        assert doc["result"] == {"n": big}
        assert dumps(doc["result"]) == f'{{"n":{big}}}'


async def test_no_per_job_state_outlives_the_jobs(store_url: str, tmp_path: Path) -> None:
    """What the process keeps per job is bounded (the recent-jobs memory) or gone once the
    job ends: RSS stays flat across any number of jobs."""
    async with orchestrator(store_url, tmp_path, LINEAR, NOOP) as orch:
        noop = orch.registry.current("noop")
        assert noop is not None
        for n in range(5):  # jobs that end in the commit that creates them
            job_id = await orch.submit(noop, {"n": n}, client="c")
            assert (await finished(orch, job_id))["status"] == "finished"
        poll = asyncio.create_task(orch.next_tasks("w1", ("echo",), 5, 50))
        await eventually(lambda: orch.dispatcher.waiters.get("echo"), what="the poll waits")
        job_ids = await asyncio.gather(*(submit(orch, n) for n in range(30)))
        tasks = await poll
        while len(tasks) < 30:
            tasks += await orch.next_tasks("w1", ("echo",), 5, 50)
        waits = [asyncio.create_task(orch.read(j, "c", 5)) for j in job_ids]
        await answer_all(orch, "w1", tasks)
        assert all(
            r is not None and r.doc["status"] == "finished" for r in await asyncio.gather(*waits)
        )
        assert orch._locks == {}
        assert orch._done_waiters == {}
        assert orch._deferred_done == {}
        assert orch.dispatcher.waiters == {}
        assert len(orch.recent) <= 35  # at most one entry per job (and bounded)


async def test_queued_tasks_go_before_new_ones_are_handed_off(
    store_url: str, tmp_path: Path
) -> None:
    """A new task is handed to a waiting poll only when nothing of its type may be queued:
    otherwise a stream of new tasks could keep the queued ones waiting."""
    async with orchestrator(store_url, tmp_path, LINEAR) as orch:
        first = await submit(orch, 1)  # nobody polls: queued
        poll = asyncio.create_task(orch.next_tasks("w1", ("echo",), 5, 1))
        await asyncio.sleep(0)  # the poll waits; the dispatcher has not leased yet
        second = await submit(orch, 2)
        tasks = await poll
        assert [t["job_id"] for t in tasks] == [first]
        tasks += await orch.next_tasks("w1", ("echo",), 5, 1)
        assert [t["job_id"] for t in tasks] == [first, second]
        await answer_all(orch, "w1", tasks)


async def test_one_poll_gets_queued_tasks_from_every_partition_at_once(
    redis_url: str, tmp_path: Path
) -> None:
    """The dispatcher leases from all queues in one pass before a poll answers, so a poll
    is not answered with one partition's share while the others' tasks wait."""
    async with orchestrator(redis_url, tmp_path, LINEAR) as orch:
        job_ids = [await submit(orch, n) for n in range(8)]  # nobody polls: queued
        partitions = {orch.store.keys.partition(j) for j in job_ids}
        assert len(partitions) > 1  # 4 partitions: all 8 in one has odds of 4**-7
        before = await command_calls(redis_url)
        tasks = await orch.next_tasks("w1", ("echo",), 5, 8)
        used = spent(before, await command_calls(redis_url))
        assert sorted(t["job_id"] for t in tasks) == sorted(job_ids)
        assert used["zrange"] == 4, used  # one peek per partition, in one round trip
        await answer_all(orch, "w1", tasks)


async def test_a_poll_for_several_types_takes_no_more_than_it_asked(
    store_url: str, tmp_path: Path
) -> None:
    two_types = LINEAR.replace("blueprint: linear", "blueprint: other").replace(
        "task: echo", "task: shout"
    )
    async with orchestrator(store_url, tmp_path, LINEAR, two_types) as orch:
        other = orch.registry.current("other")
        assert other is not None
        first = await submit(orch, 1)  # queued: nobody polls yet
        second = await orch.submit(other, {"n": 2}, client="c")
        tasks = await orch.next_tasks("w1", ("echo", "shout"), 5, 1)
        assert len(tasks) == 1  # one place, counted once across both types
        tasks += await orch.next_tasks("w1", ("echo", "shout"), 5, 1)
        assert sorted(t["job_id"] for t in tasks) == sorted([first, second])
        await answer_all(orch, "w1", tasks)


async def test_a_task_handed_to_a_poll_that_went_is_put_back_at_once(
    store_url: str, tmp_path: Path
) -> None:
    async with orchestrator(store_url, tmp_path, LINEAR) as orch:
        poll = asyncio.create_task(orch.next_tasks("w1", ("echo",), 5, 1))
        await eventually(lambda: orch.dispatcher.waiters.get("echo"), what="the poll waits")
        (waiter,) = orch.dispatcher.waiters["echo"]
        # Past its first queue peek (slow on a loaded machine), the poll takes hand-offs.
        await eventually(lambda: not waiter.queue_first, what="the poll waits for hand-offs")
        creating = asyncio.create_task(submit(orch, 4))
        for _ in range(50):  # a few turns of the loop: the new task is leased to that poll
            if waiter.claims:
                break
            await asyncio.sleep(0)
        assert waiter.claims == 1
        poll.cancel()  # and its request ends before the lease lands
        job_id = await creating
        tasks = await orch.next_tasks("w2", ("echo",), 2, 1)  # long before any lease expires
        assert [t["job_id"] for t in tasks] == [job_id]
        await answer_all(orch, "w2", tasks)
        assert (await finished(orch, job_id))["result"] == {"n": 4}
        history = [e["event"] for e in await orch.store.history(job_id)]
        assert "task_released" in history


async def test_the_engine_carries_on_after_redis_restarts(tmp_path: Path) -> None:
    """Redis dies (SIGKILL) and comes back with its data (AOF) but none of its scripts: calls
    fail cleanly meanwhile, then batches, leases and heartbeats work again."""
    binary = require_program("redis-server", "apt-get install redis-server")
    redis = RedisServer(binary, ("--appendonly", "yes", "--appendfsync", "always"))
    redis.start()
    try:
        async with orchestrator(redis.url, tmp_path, LINEAR) as orch:
            queued = await submit(orch, 1)  # nobody polls: queued
            redis.kill()
            with pytest.raises(StoreUnavailable):
                await submit(orch, 2)
            with pytest.raises(StoreUnavailable):
                await orch.heartbeat("w1", [], 10_000)
            redis.start()  # same port and folder: the jobs are back, the scripts are not
            tasks = await orch.next_tasks("w1", ("echo",), 5, 5)  # the lease script reloads
            assert [t["job_id"] for t in tasks] == [queued]
            created = await asyncio.gather(*(submit(orch, n) for n in range(3, 6)))
            while len(tasks) < 4:
                tasks += await orch.next_tasks("w1", ("echo",), 5, 5)
            await answer_all(orch, "w1", tasks)
            for job_id in [queued, *created]:
                assert (await finished(orch, job_id))["status"] == "finished"
            assert await orch.heartbeat("w1", [], 10_000) == (False, [])  # never registered
    finally:
        redis.stop()
