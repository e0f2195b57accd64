"""Pure pieces: URIs, containment, nested replacement; slot fairness and poll waits."""

from __future__ import annotations

import asyncio
import itertools
from pathlib import Path

from worker_sdk import OrchestratorConfig, WorkerConfig
from worker_sdk.connection import Connection
from worker_sdk.conversions import Mode
from worker_sdk.paths import (
    S3Uri,
    existing_path,
    inside,
    parse_s3_uri,
    relative_parts,
    replace_strings,
    task_folder_name,
)
from worker_sdk.routing import Router, SlotGate


def test_s3_uris() -> None:
    assert parse_s3_uri("s3://bucket/a/b.png") == S3Uri("bucket", "a/b.png")
    assert parse_s3_uri("s3://bucket/a/") == S3Uri("bucket", "a/")
    assert parse_s3_uri("s3://bucket/a/").is_folder  # type: ignore[union-attr]
    assert not S3Uri("bucket", "a/b.png").is_folder
    assert S3Uri("bucket", "a/b.png").name == "b.png"
    assert S3Uri("bucket", "a/").name == "a"
    assert S3Uri("bucket", "").name == "bucket"
    assert S3Uri("bucket", "x/..").name == "object"  # never a name that climbs
    for text in ("s3://bucket", "s3:///key", "http://bucket/key", "S3://bucket/key", "s3 ://b/k"):
        assert parse_s3_uri(text) is None, text


def test_folder_keys_that_could_escape_are_refused() -> None:
    assert relative_parts("p/a/b.txt", "p/") == ("a", "b.txt")
    for key in ("p/../x", "p/a//b", "p/./a", "p/", "p/a/"):
        assert relative_parts(key, "p/") is None, key


def test_task_folder_names_cannot_climb() -> None:
    assert task_folder_name("job-1_2") == "job-1_2"
    for hostile in ("../../etc", "a/b", "", "x" * 200):
        name = task_folder_name(hostile)
        assert "/" not in name
        assert name.startswith("task-")
        assert name != ".."


def test_containment_follows_dots_and_symlinks(tmp_path: Path) -> None:
    root = (tmp_path / "payloads").resolve()
    (root / "task").mkdir(parents=True)
    (root / "task" / "out.txt").write_text("x")
    outside = tmp_path / "secret.txt"
    outside.write_text("secret")
    (root / "task" / "link").symlink_to(outside)
    (root / "task" / "inner-link").symlink_to(root / "task" / "out.txt")
    assert inside(root / "task" / "out.txt", root)
    assert inside(root / "task" / "inner-link", root)
    assert not inside(root / "task" / ".." / ".." / "secret.txt", root)
    assert not inside(root / "task" / "link", root)
    assert not inside(Path("/etc/passwd"), root)


def test_existing_path_only_for_absolute_existing_names(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    assert existing_path(str(tmp_path / "f")) == tmp_path / "f"
    assert existing_path(str(tmp_path / "dangling")) is not None
    for text in ("f", str(tmp_path / "missing"), "/a\0b", "hello world", "/" + "x" * 5000):
        assert existing_path(text) is None


async def test_replace_strings_reaches_every_depth_and_keeps_keys() -> None:
    async def upper(text: str) -> str:
        return text.upper()

    value = {"a": "x", "s3://key": [1, "y", {"b": ("z", None, True)}], "n": 2.5}
    assert await replace_strings(value, upper) == {
        "a": "X",
        "s3://key": [1, "Y", {"b": ["Z", None, True]}],
        "n": 2.5,
    }


async def grants(gate: SlotGate, keys: list[tuple[str, int]], rounds: int) -> list[str]:
    """Each key asks for a slot again as soon as it got one (as a poll loop does once its
    task started); return who got each of `rounds` grants."""
    order: list[str] = []
    running: set[asyncio.Task[None]] = set()
    enough = asyncio.Event()

    async def task() -> None:
        await asyncio.sleep(0)
        gate.release()

    async def contender(key: str, weight: int) -> None:
        while True:
            await gate.acquire(key, weight)
            order.append(key)
            if len(order) >= rounds:
                enough.set()
            running.add(asyncio.create_task(task()))

    gate.used = gate.capacity  # all busy: every contender queues
    tasks = [asyncio.create_task(contender(k, w)) for k, w in keys]
    await asyncio.sleep(0)
    gate.release()
    await enough.wait()
    for each in [*tasks, *running]:
        each.cancel()
    await asyncio.gather(*tasks, *running, return_exceptions=True)
    return order[:rounds]


async def test_slots_alternate_between_equal_weights() -> None:
    order = await grants(SlotGate(1), [("a", 1), ("b", 1)], 20)
    assert order.count("a") == order.count("b") == 10
    assert all(x != y for x, y in itertools.pairwise(order))


async def test_slots_follow_the_weights() -> None:
    order = await grants(SlotGate(1), [("a", 2), ("b", 1)], 30)
    assert (order.count("a"), order.count("b")) == (20, 10)


async def test_a_cancelled_waiter_gives_its_slot_back() -> None:
    gate = SlotGate(1)
    await gate.acquire("a")
    waiting = asyncio.create_task(gate.acquire("b"))
    await asyncio.sleep(0)
    waiting.cancel()
    gate.release()
    await asyncio.gather(waiting, return_exceptions=True)
    assert gate.used == 0
    await asyncio.wait_for(gate.acquire("c"), 1)


def router(mode: Mode, slots: int, ups: list[bool]) -> tuple[Router, list[Connection]]:
    orchestrators = tuple(OrchestratorConfig(f"http://o{i}:1", "t") for i in range(len(ups)))
    config = WorkerConfig(
        orchestrators,
        "w",
        mode=mode,
        poll_timeout=30,
        round_robin_turn=1,
        max_concurrent_tasks=slots,
    )
    connections = [Connection(o, "w", 1) for o in orchestrators]
    for connection, up in zip(connections, ups, strict=True):
        connection.up = up
    gate = SlotGate(slots)
    return Router(config, connections, gate, list, lambda c, t: True, asyncio.Event()), connections


async def test_failover_polls_the_first_orchestrator_that_is_up() -> None:
    route, (first, second, _third) = router("FAILOVER", 4, [False, True, True])
    assert route.active() is second
    first.mark_up()
    assert route.active() is first
    assert route.poll_wait(first) == 30


async def test_round_robin_waits_long_only_when_slots_are_spare() -> None:
    route, (a, b) = router("ROUND_ROBIN", 1, [True, True])
    route.gate.used = 1  # a's poll holds the only slot
    assert route.poll_wait(a) == 1  # short turn: b also wants that slot
    route._empty[a.url] = True
    assert route.poll_wait(a) == 0  # a was idle last time: just look
    b.up = False
    assert route.poll_wait(a) == 30  # nobody else to serve
    route, (a, b) = router("ROUND_ROBIN", 4, [True, True])
    route.gate.used = 1
    assert route.poll_wait(a) == 30
