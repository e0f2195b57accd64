"""Interlock's batch extensions in the SDK: several tasks per poll, several results per
request, and plain RXON with an orchestrator that has neither (docs/rxon-protocol.md §11)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from tests.support.redis_server import free_port
from tests.worker_sdk.support import eventually, fast_config, running
from worker_sdk import OrchestratorConfig, TaskContext, Worker, WorkerConfig
from worker_sdk.batching import MAX_RESULTS_PER_BATCH
from worker_sdk.connection import Connection, ResultAnswer, Unavailable
from worker_sdk.delivery import Delivery
from worker_sdk.routing import MAX_TASKS_PER_POLL, Router, SlotGate

# -- slots --------------------------------------------------------------------------------------


async def test_try_acquire_takes_free_slots_without_waiting() -> None:
    gate = SlotGate(5)
    await gate.acquire("a")
    assert gate.try_acquire(3) == 3
    assert gate.try_acquire(3) == 1  # only one was left
    assert gate.free == 0
    gate.release(4)
    assert gate.used == 1


async def test_try_acquire_leaves_free_slots_to_queued_waiters() -> None:
    gate = SlotGate(2)
    assert gate.try_acquire(2) == 2
    waiting = asyncio.create_task(gate.acquire("b"))
    await asyncio.sleep(0)
    gate.release(2)  # one goes to the waiter, one stays free
    await asyncio.wait_for(waiting, 1)
    assert gate.used == 1
    other = asyncio.create_task(gate.acquire("c"))
    await asyncio.sleep(0)
    assert other.done()
    third = asyncio.create_task(gate.acquire("d"))  # queued: the gate is full
    await asyncio.sleep(0)
    assert gate.try_acquire(5) == 0
    gate.release()
    await asyncio.wait_for(third, 1)
    gate.release(0)  # a no-op
    assert gate.used == 2


def router(mode: Any, slots: int, ups: list[bool]) -> tuple[Router, list[Connection]]:
    orchestrators = tuple(OrchestratorConfig(f"http://o{i}:1", "t") for i in range(len(ups)))
    config = WorkerConfig(orchestrators, "w", mode=mode, max_concurrent_tasks=slots)
    connections = [Connection(o, "w", 1) for o in orchestrators]
    for connection, up in zip(connections, ups, strict=True):
        connection.up = up
    return Router(config, connections, SlotGate(slots), list, lambda c, t: True, asyncio.Event()), (
        connections
    )


async def test_a_poll_takes_extra_slots_up_to_the_cap() -> None:
    route, (first, _second) = router("FAILOVER", 200, [True, True])
    route.gate.used = 1  # the poll's own slot
    assert route.extra_slots(first) == MAX_TASKS_PER_POLL - 1
    route.gate.used = 196
    assert route.extra_slots(first) == 4
    route.gate.used = 200
    assert route.extra_slots(first) == 0


async def test_round_robin_leaves_a_slot_for_each_other_orchestrator() -> None:
    route, (a, b, c) = router("ROUND_ROBIN", 10, [True, True, True])
    route.gate.used = 1
    route.gate.used_by[a.url] = 1
    assert route.extra_slots(a) == 3  # b and c have work: a takes its share, 4 slots
    route._empty[b.url] = route._empty[c.url] = True  # their last polls came back empty
    assert route.extra_slots(a) == 7  # 9 free, 2 kept for b and c
    before = route.poll_wait(a)
    route.gate.used += route.extra_slots(a)
    assert route.poll_wait(a) == before == 30  # batching does not shorten the wait
    c.up = False
    route.gate.used = 9
    assert route.extra_slots(a) == 0  # the last free slot is b's
    b.up = False
    assert route.extra_slots(a) == 1


async def test_round_robin_holds_each_busy_orchestrator_to_its_share() -> None:
    # 10 slots, two orchestrators with work: 5 each, whoever polls when slots free up
    route, (a, b) = router("ROUND_ROBIN", 10, [True, True])
    route.gate.used, route.gate.used_by = 6, {a.url: 5, b.url: 1}  # b's poll holds 1
    assert route.over_share(a)  # a waits for one of its own slots to come back
    assert route.extra_slots(b) == 3  # 4 free, one kept for a's next poll
    assert not route.over_share(b)
    route._empty[b.url] = True  # b has nothing: a may take every free slot
    assert not route.over_share(a)
    assert route.extra_slots(a) == 3  # 4 free, one kept for b's next poll
    # weights: 3 to 1 gives a 8 of 10 (rounded up)
    heavy = OrchestratorConfig("http://heavy:1", "t", weight=3)
    route, (c, d) = router("ROUND_ROBIN", 10, [True, True])
    c.config = heavy
    assert route.share(c) == 8
    assert route.share(d) == 3


# -- a scripted orchestrator --------------------------------------------------------------------


class Scripted:
    """An orchestrator that hands out queued tasks and records what the worker sends.
    With `batches=False` it speaks plain RXON: one task per poll, no batch result route."""

    def __init__(self, batches: bool = True) -> None:
        self.batches = batches
        self.queue: list[dict[str, Any]] = []
        self.added = 0
        self.polls: list[dict[str, str]] = []
        self.handed: list[list[str]] = []  # task ids per poll that brought tasks
        self.result_requests: list[list[dict[str, Any]]] = []  # bodies per request
        self.single_results = 0
        self.url = ""

    def add_tasks(self, count: int) -> list[str]:
        ids = [f"t{self.added + i}" for i in range(count)]
        self.added += count
        self.queue += [
            {"job_id": f"j-{i}", "task_id": i, "type": "echo", "params": {}} for i in ids
        ]
        return ids

    @property
    def delivered(self) -> list[str]:
        return [body["task_id"] for bodies in self.result_requests for body in bodies]

    async def register(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "registered"})

    async def heartbeat(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "cancel_task_ids": []})

    async def next(self, request: web.Request) -> web.Response:
        self.polls.append(dict(request.query))
        if not self.queue:
            await asyncio.sleep(min(float(request.query.get("timeout", "0")), 0.05))
            return web.Response(status=204)
        most = int(request.query.get("max_tasks", "1")) if self.batches else 1
        tasks, self.queue = self.queue[:most], self.queue[most:]
        self.handed.append([t["task_id"] for t in tasks])
        return web.json_response({"tasks": tasks} if self.batches else tasks[0])

    async def result(self, request: web.Request) -> web.Response:
        self.single_results += 1
        self.result_requests.append([await request.json()])
        return web.json_response({"status": "accepted"})

    async def results(self, request: web.Request) -> web.Response:
        items = (await request.json())["results"]
        assert 1 <= len(items) <= MAX_RESULTS_PER_BATCH
        self.result_requests.append(items)
        return web.json_response({"results": [{"status": "accepted"} for _ in items]})

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/_worker/workers/register", self.register)
        app.router.add_patch("/_worker/workers/{worker_id}", self.heartbeat)
        app.router.add_get("/_worker/workers/{worker_id}/tasks/next", self.next)
        app.router.add_post("/_worker/tasks/result", self.result)
        if self.batches:
            app.router.add_post("/_worker/tasks/results", self.results)
        return app


@pytest.fixture
async def scripted() -> AsyncIterator[Callable[[bool], Any]]:
    runners: list[web.AppRunner] = []

    async def start(batches: bool = True) -> Scripted:
        orchestrator = Scripted(batches)
        runner = web.AppRunner(orchestrator.app())
        await runner.setup()
        port = free_port()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        runners.append(runner)
        orchestrator.url = f"http://127.0.0.1:{port}"
        return orchestrator

    yield start
    for runner in runners:
        await runner.cleanup()


def gated_worker(config: WorkerConfig, gate: asyncio.Event) -> tuple[Worker, list[str]]:
    """A worker whose `echo` tasks all wait for `gate`; and the task ids it started."""
    worker = Worker(config)
    started: list[str] = []

    @worker.task("echo")
    async def echo(params: dict[str, Any], ctx: TaskContext) -> dict[str, Any]:
        started.append(ctx.task_id)
        await gate.wait()
        return {"task": ctx.task_id}

    return worker, started


async def test_one_poll_brings_a_task_for_each_free_slot_and_results_travel_together(
    tmp_path: Path, scripted: Any
) -> None:
    # Given an orchestrator with 8 queued tasks and a worker with 8 slots
    orchestrator = await scripted()
    ids = orchestrator.add_tasks(8)
    gate = asyncio.Event()
    worker, started = gated_worker(
        fast_config(tmp_path, orchestrator.url, max_concurrent_tasks=8), gate
    )
    async with running(worker):
        # When the worker polls: one poll asks for 8 and brings them all
        await eventually(lambda: len(started) == 8, what="8 tasks started")
        assert orchestrator.polls[0]["max_tasks"] == "8"
        assert orchestrator.handed == [ids]
        # And when they all finish at once
        gate.set()
        await eventually(lambda: len(orchestrator.delivered) == 8, what="8 results delivered")
        await eventually(lambda: not worker.task_ids, what="nothing pending")
    # Then their results went back in fewer requests than results, each exactly once
    assert sorted(orchestrator.delivered) == sorted(ids)
    assert len(orchestrator.result_requests) < 8
    assert orchestrator.single_results == 0


async def test_a_poll_never_asks_for_more_than_the_free_slots(
    tmp_path: Path, scripted: Any
) -> None:
    orchestrator = await scripted()
    gate = asyncio.Event()
    worker, started = gated_worker(
        fast_config(tmp_path, orchestrator.url, max_concurrent_tasks=5), gate
    )
    orchestrator.add_tasks(3)
    async with running(worker):
        await eventually(lambda: len(started) == 3, what="3 tasks started")
        orchestrator.add_tasks(10)
        await eventually(lambda: len(started) == 5, what="5 tasks started")
        await asyncio.sleep(0.1)
        assert len(started) == 5  # never more than MAX_CONCURRENT_TASKS at once
        asks = [int(p["max_tasks"]) for p in orchestrator.polls]
        assert asks[0] == 5
        assert all(1 <= n <= 5 for n in asks)
        gate.set()
        await eventually(lambda: len(orchestrator.delivered) == 13, what="13 results delivered")
    assert len(set(orchestrator.delivered)) == 13


async def test_an_orchestrator_without_batches_gets_plain_rxon(
    tmp_path: Path, scripted: Any
) -> None:
    # Given an orchestrator that answers one task per poll and has no batch result route
    orchestrator = await scripted(batches=False)
    ids = orchestrator.add_tasks(4)
    gate = asyncio.Event()
    gate.set()
    worker, started = gated_worker(
        fast_config(tmp_path, orchestrator.url, max_concurrent_tasks=4), gate
    )
    # When the worker runs its tasks
    async with running(worker):
        await eventually(lambda: len(orchestrator.delivered) == 4, what="4 results delivered")
        await eventually(lambda: not worker.task_ids, what="nothing pending")
    # Then every task ran once and every result went alone to POST /tasks/result
    assert sorted(started) == sorted(ids)
    assert orchestrator.single_results == 4
    assert sorted(orchestrator.delivered) == sorted(ids)


# -- delivery through the batch route -----------------------------------------------------------


class BatchEndpoint:
    """`POST /_worker/tasks/results` answering from a script: a status, or per-item answers."""

    def __init__(self, script: Callable[[list[dict[str, Any]]], tuple[int, Any]]) -> None:
        self.script = script
        self.requests: list[list[dict[str, Any]]] = []
        self.hold: asyncio.Event | None = None

    async def handle(self, request: web.Request) -> web.Response:
        items = (await request.json())["results"]
        self.requests.append(items)
        if self.hold is not None:
            await self.hold.wait()
        status, body = self.script(items)
        return web.Response(status=status, text=json.dumps(body), content_type="application/json")


@pytest.fixture
async def endpoint() -> AsyncIterator[Callable[[Any], Any]]:
    runners: list[web.AppRunner] = []

    async def start(script: Any) -> tuple[BatchEndpoint, str]:
        batch = BatchEndpoint(script)
        app = web.Application()
        app.router.add_post("/_worker/tasks/results", batch.handle)
        runner = web.AppRunner(app)
        await runner.setup()
        port = free_port()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        runners.append(runner)
        return batch, f"http://127.0.0.1:{port}"

    yield start
    for runner in runners:
        await runner.cleanup()


def accept_all(items: list[dict[str, Any]]) -> tuple[int, Any]:
    return 200, {"results": [{"status": "accepted"} for _ in items]}


def body(n: int) -> dict[str, Any]:
    return {"job_id": f"j{n}", "task_id": f"t{n}", "worker_id": "w1", "data": {"n": n}}


async def settle(url: str, bodies: list[dict[str, Any]], before: Any = None) -> list[str]:
    """Deliver `bodies` issued by `url`; the task ids in the order they settled."""
    connection = Connection(OrchestratorConfig(url, "t"), "w1", 2.0)
    await connection.open()
    connection.up = True
    delivery = Delivery("w1", [connection], 0.01, 0.05)
    settled: list[str] = []

    def submit(item: dict[str, Any]) -> None:
        async def done() -> None:
            settled.append(item["task_id"])

        delivery.submit(connection, item, done)

    try:
        for item in bodies:
            submit(item)
            if before is not None:
                await before(item)
        await eventually(lambda: len(settled) == len(bodies), within_s=5, what="all settled")
    finally:
        await delivery.drain(0.1)
        await connection.close()
    return settled


async def test_results_arriving_during_a_request_go_together_in_the_next(endpoint: Any) -> None:
    batch, url = await endpoint(accept_all)
    batch.hold = asyncio.Event()

    async def after_first(item: dict[str, Any]) -> None:
        if item["task_id"] == "t0":  # the first goes alone, at once; hold it in flight
            await eventually(lambda: len(batch.requests) == 1, what="the first request")
        if item["task_id"] == "t5":
            assert batch.hold is not None
            batch.hold.set()

    settled = await settle(url, [body(n) for n in range(6)], after_first)
    assert sorted(settled) == [f"t{n}" for n in range(6)]
    assert [[i["task_id"] for i in r] for r in batch.requests] == [
        ["t0"],
        ["t1", "t2", "t3", "t4", "t5"],
    ]


async def test_a_failed_batch_is_retried_and_each_item_settles_on_its_own(endpoint: Any) -> None:
    calls = 0

    def script(items: list[dict[str, Any]]) -> tuple[int, Any]:
        nonlocal calls
        calls += 1
        if calls == 1:
            return 503, {"error": {"message": "store down"}}
        return 200, {
            "results": [
                {"status": "ignored", "reason": "invalid_result", "message": "x"}
                if i["task_id"] == "t1"
                else {"status": "accepted"}
                for i in items
            ]
        }

    batch, url = await endpoint(script)
    settled = await settle(url, [body(n) for n in range(3)])
    assert sorted(settled) == ["t0", "t1", "t2"]  # t1's ignored answer is definitive
    sent = [i for r in batch.requests for i in r]
    assert sorted(i["task_id"] for i in sent) == ["t0", "t0", "t1", "t1", "t2", "t2"]
    for n in range(3):  # each retry resent the identical body
        assert [i for i in sent if i["task_id"] == f"t{n}"] == [body(n), body(n)]


async def test_a_batch_too_large_for_the_server_goes_one_by_one(endpoint: Any) -> None:
    batch, url = await endpoint(lambda items: (413, {"error": "too large"}))
    connection = Connection(OrchestratorConfig(url, "t"), "w1", 2.0)
    await connection.open()
    try:
        encoded = [json.dumps(body(n)).encode() for n in range(2)]
        outcomes = await connection.send_results(encoded)
    finally:
        await connection.close()
    # one by one, the single route (missing on this server) answers 404: definitive refusals
    assert [type(o).__name__ for o in outcomes] == ["Refused", "Refused"]
    assert connection.batch_results  # still used for the next batch
    assert len(batch.requests) == 1


async def test_a_malformed_batch_answer_counts_as_no_answer(endpoint: Any) -> None:
    _, url = await endpoint(lambda items: (200, {"results": []}))
    connection = Connection(OrchestratorConfig(url, "t"), "w1", 2.0)
    await connection.open()
    try:
        with pytest.raises(Unavailable, match="not"):
            await connection.send_results([json.dumps(body(1)).encode()])
    finally:
        await connection.close()


def test_result_answers_are_read_per_item() -> None:
    from worker_sdk.connection import _result_answers

    answers = _result_answers(
        {"results": [{"status": "accepted"}, {"status": "ignored", "reason": "duplicate"}]}, 2
    )
    assert answers == [ResultAnswer(True), ResultAnswer(False, "duplicate")]
