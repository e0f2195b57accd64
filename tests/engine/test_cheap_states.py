"""What a state costs: worker-free states ride in the commit that reached them, and a task
state costs a bounded number of Redis commands. Counts, not times: they hold on a busy
machine and fail if the cost comes back."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from bench.blueprints import chain
from engine.clock import now_ms
from engine.runtime.orchestrator import BLANKED_TASKS, Orchestrator, OrchestratorSettings
from engine.store.client import Commit, LeaseBatch
from tests.engine.test_hot_path import command_calls, spent
from tests.engine.test_orchestrator import finished, orchestrator, run_task

CHAIN = """
blueprint: chain
start: prepare
states:
  prepare: {set: {size: "${ initial_data.n }"}, next: route}
  route:
    choice:
      - when: "steps.prepare.size > `100`"
        goto: big
    otherwise: pause
  big: {end: failed}
  pause: {wait: 0, next: label}
  label: {set: {label: "${ join('-', ['n', to_string(steps.prepare.size)]) }"}, next: work}
  work:
    task: echo
    params: {label: "${ steps.label.label }"}
    on: {success: tidy}
  tidy: {set: {done: true}, next: gate}
  gate: {wait: 0s, next: done}
  done: {end: finished, output: {label: "${ steps.work.label }"}}
"""


def counting_commits(orch: Orchestrator) -> list[Commit]:
    """Every change the orchestrator sends to its store, from now on."""
    seen: list[Commit] = []
    commit = orch.store.commit

    async def counted(change: Commit, *, history_start: int) -> bool:
        seen.append(change)
        return await commit(change, history_start=history_start)

    orch.store.commit = counted  # type: ignore[method-assign]
    return seen


async def test_a_chain_of_worker_free_states_is_one_commit(store_url: str, tmp_path: Path) -> None:
    quiet = OrchestratorSettings(timer_interval_s=3600)  # no timer could move the job on
    async with orchestrator(store_url, tmp_path, CHAIN, orch_settings=quiet) as orch:
        commits = counting_commits(orch)
        blueprint = orch.registry.current("chain")
        assert blueprint is not None
        job_id = await orch.submit(blueprint, {"n": 7}, client="c")
        # start -> set -> choice -> wait 0 -> set -> task: all in the creating commit.
        assert len(commits) == 1
        record = await orch.store.read_job(job_id)
        assert record is not None
        assert (record.doc["state"], record.doc["status"]) == ("work", "queued")
        assert record.doc["wait_until"] is None
        task = await orch.next_task("w1", ("echo",), 5)
        assert task is not None
        assert task["params"] == {"label": "n-7"}
        commits.clear()
        reply = await orch.submit_result(
            "w1", {"job_id": job_id, "task_id": task["task_id"], "data": task["params"]}
        )
        assert reply == {"status": "accepted"}
        # result -> set -> wait 0s -> end: one commit ends the job.
        doc = await finished(orch, job_id)
        assert (doc["status"], doc["result"]) == ("finished", {"label": "n-7"})
        assert len(commits) == 1
        history = await orch.store.history(job_id)
        entered = [e["state"] for e in history if e["event"] == "state_entered"]
        assert entered == ["prepare", "route", "pause", "label", "work", "tidy", "gate", "done"]


@contextlib.asynccontextmanager
async def echo_worker(orch: Orchestrator, polls: int) -> AsyncIterator[None]:
    """A worker as the SDK runs one (a poll is open while results go back), with `polls`
    polls at a time: more than the tasks that can be out at once, so a free one is always
    there for a new task."""
    sending: set[asyncio.Task[Any]] = set()

    async def answer(task: dict[str, Any]) -> None:
        reply = await orch.submit_result(
            "w1", {"job_id": task["job_id"], "task_id": task["task_id"], "data": task["params"]}
        )
        assert reply == {"status": "accepted"}

    async def poll() -> None:
        while True:
            for task in await orch.next_tasks("w1", ("echo",), 5, 32):
                sent = asyncio.create_task(answer(task))
                sending.add(sent)
                sent.add_done_callback(sending.discard)

    polling = [asyncio.create_task(poll()) for _ in range(polls)]
    try:
        yield
    finally:
        for each in polling:
            each.cancel()
        await asyncio.gather(*polling, *sending, return_exceptions=True)


async def commands_per_job(orch: Orchestrator, url: str, name: str, jobs: int) -> dict[str, int]:
    """Redis commands that `jobs` concurrent jobs of blueprint `name` cost, by command."""
    blueprint = orch.registry.current(name)
    assert blueprint is not None

    async def one(n: int) -> None:
        job_id = await orch.submit(blueprint, {"n": n}, client="c")
        doc = await finished(orch, job_id, 30)
        assert (doc["status"], doc["result"]) == ("finished", {"n": n})

    await one(0)  # scripts loaded, the worker's polls open
    before = await command_calls(url)
    await asyncio.gather(*(one(n) for n in range(1, jobs + 1)))
    used = spent(before, await command_calls(url))
    used.pop("hello", None)  # a connection opened by the counting itself
    return used


JOBS = 40


@pytest.mark.parametrize("states", [1, 10])
async def test_redis_commands_per_task_state(redis_url: str, tmp_path: Path, states: int) -> None:
    quiet = OrchestratorSettings(timer_interval_s=3600)  # the counts are the jobs' own
    name, text = chain(states)  # `states` sequential echo task states, then end
    async with (
        orchestrator(redis_url, tmp_path, text, orch_settings=quiet) as orch,
        echo_worker(orch, polls=JOBS + 10),
    ):
        used = await commands_per_job(orch, redis_url, name, JOBS)
    per_job = sum(used.values()) / JOBS
    print(f"\n{states} task state(s): {per_job:.2f} Redis commands a job: {used}")
    # Each job commits once to start and once per result. Each commit reads the version
    # (HGET) and writes the job (HSET); each result but the last blanks the answered task's
    # fields in that HSET; the last deletes the blanked fields (HDEL, one for the job) and
    # sets the finished job's expiry (PEXPIRE).
    commits = (states + 1) * JOBS
    # (On a busy machine a change can be refused now and then, when a result overtakes its
    # own lease's note in memory: the job is read again (HMGET) and the change made again.)
    again = used.pop("hmget", 0)
    assert again <= JOBS // 20, used
    assert commits <= used.pop("hget") <= commits + again, used
    assert commits <= used.pop("hset") <= commits + again, used
    assert used.pop("hdel", 0) == (JOBS if states > 1 else 0), used
    assert used.pop("pexpire") == JOBS, used
    # The dispatcher's once-a-second sweep peeks each partition's queue (ZRANGE): by the
    # clock, not by the job. Nothing else peeks, and no lease script runs (HMGET, counted
    # above): every task goes to an open poll in the commit that makes it.
    partitions = orch.store.keys.partitions
    assert used.get("zrange", 0) % partitions == 0, used
    assert used.pop("zrange", 0) <= 5 * partitions, used
    # The rest is per script, shared by the changes of a batch.
    scripts = used["evalsha"]
    assert set(used) <= {"evalsha", "zadd", "zrem", "publish", "sadd"}, used
    assert used.get("sadd", 0) < JOBS / 2, used  # the client's name: once a batch, not a job
    assert max(used.values()) <= 2 * scripts, used
    assert per_job <= 2.5 * states + 4, (per_job, used)


async def test_a_long_chain_keeps_a_bounded_number_of_blanked_task_fields(
    redis_url: str, tmp_path: Path
) -> None:
    """A task state blanks its ended task's fields instead of deleting them with one more
    command. Given a chain of 75 task states answered one at a time, then after every
    answer the job's hash holds the fields of at most BLANKED_TASKS blanked tasks, a
    blanked task can no longer be leased, and the finished job keeps none of them."""
    name, text = chain(75)
    async with orchestrator(redis_url, tmp_path, text) as orch:
        job_id = await orch.submit(orch.registry.by_name[name], {"n": 1}, client="c")
        key = orch.store.keys.job(job_id)
        most = 0
        for _ in range(75):
            task, _ = await run_task(orch, "w1", "echo", lambda t: {"data": t["params"]})
            stored = {str(k): str(v) for k, v in (await orch.store.redis.hgetall(key)).items()}
            blank = [name for name, value in stored.items() if value == ""]
            assert all(name.startswith(("p:", "t:", "l:")) for name in blank), blank
            most = max(most, len(blank))
            # the answered task, as if it were still in its queue, is not leased again
            member = f"{job_id}|{task['task_id']}"
            partition = orch.store.keys.partition(job_id)
            queue = orch.store.keys.queue(partition, "echo")
            await orch.store.redis.zadd(queue, {member: 0})
            batch = LeaseBatch(partition, "echo", [member], ["w2"])
            assert await orch.store.lease([batch], now_ms()) == [[]]
        assert (await finished(orch, job_id))["result"] == {"n": 1}
        # (a later answer than the last one blanked would have gone past the bound)
        assert 3 * BLANKED_TASKS - 3 <= most <= 3 * BLANKED_TASKS, most
        ended = await orch.store.redis.hgetall(key)
        last = f"p:{task['task_id']}"  # the last task's payload, emptied at the end
        assert [name for name, value in ended.items() if value == ""] == [last]
