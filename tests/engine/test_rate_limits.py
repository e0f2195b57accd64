"""Rate limits per task type: the TASK_RATE_LIMITS syntax, the token bucket on the embedded
store, a single Redis and a Redis Cluster, and a dispatcher that leases a limited type only
with a token (never by handing a new task to a waiting poll inside its commit)."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from engine.blueprint.loader import load_blueprints
from engine.runtime.host import OrchestratorSettings
from engine.runtime.jobdoc import RuntimeSettings
from engine.runtime.orchestrator import Orchestrator
from engine.runtime.ratelimit import RateLimit, parse_rate_limits
from engine.runtime.registry import Registry
from engine.store.client import Store
from server.config import Settings
from server.errors import ConfigError

pytestmark = pytest.mark.timeout(60)


@pytest.mark.parametrize(
    ("text", "limits"),
    [
        ("resize=10/s:20", [RateLimit("resize", 10.0, 20)]),
        ("resize=10/s", [RateLimit("resize", 10.0, 10)]),  # burst: one second's worth
        ("mail=600/m, sms=36/h:3", [RateLimit("mail", 10.0, 10), RateLimit("sms", 0.01, 3)]),
        ("slow=1/m", [RateLimit("slow", 1 / 60, 1)]),  # at least 1
        ("a.b:c-d_e=2.5/s", [RateLimit("a.b:c-d_e", 2.5, 3)]),
        ("", []),
    ],
)
def test_rate_limits_are_read_as_type_count_unit_and_burst(
    text: str, limits: list[RateLimit]
) -> None:
    assert list(parse_rate_limits(text)) == limits


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("resize", "is not a rate limit; write TYPE=COUNT/UNIT[:BURST]"),
        ("resize=10", "is not a rate limit"),
        ("resize=10/d", "is not a rate limit"),
        ("resize=0/s", "the rate must be above 0"),
        ("resize=10/s:0", "the burst must be 1 to"),
        ("resize=1/s,resize=2/s", "task type 'resize' has two rate limits"),
        ("re size=1/s", "is not a rate limit"),
        ("r*x=1/s", "'r*x' is not a task type"),
        ("resize=1.2.3/s", "'1.2.3' is not a number"),
    ],
)
def test_a_bad_rate_limit_names_the_entry(text: str, problem: str) -> None:
    with pytest.raises(ValueError, match=re.escape(problem)):
        parse_rate_limits(text)
    with pytest.raises(ConfigError) as refused:
        Settings.from_sources({"TASK_RATE_LIMITS": text}, {})
    assert str(refused.value).startswith("TASK_RATE_LIMITS: ")


def test_the_server_setting_reaches_the_orchestrator() -> None:
    from server.app import orchestrator_settings

    settings = Settings.from_sources({"TASK_RATE_LIMITS": "resize=5/s:2"}, {})
    assert orchestrator_settings(settings).rate_limits == (RateLimit("resize", 5.0, 2),)


@pytest.fixture
async def store(every_store_url: str) -> AsyncIterator[Store]:
    opened = await Store.connect(every_store_url, partitions=8)
    try:
        yield opened
    finally:
        await opened.close()


async def test_the_bucket_grants_at_most_its_burst_then_refills_at_the_rate(store: Store) -> None:
    # Given a bucket of 3 filling at 20 per second
    # When 10 tokens are asked at once, then 3 are granted, and the next is due in <= 50 ms
    [(got, next_ms)] = await store.take_tokens([("resize", 10, 20.0, 3)])
    assert got == 3
    assert 0 < next_ms <= 50
    [(got, _)] = await store.take_tokens([("resize", 10, 20.0, 3)])
    assert got == 0
    # Unused tokens given back are granted again (never beyond the burst)
    await store.take_tokens([("resize", -2, 20.0, 3)])
    [(got, _)] = await store.take_tokens([("resize", 10, 20.0, 3)])
    assert got == 2
    # Another type has a bucket of its own
    [(other, _)] = await store.take_tokens([("mail", 1, 20.0, 3)])
    assert other == 1
    # After the wait the bucket said, a token is there again
    await asyncio.sleep(0.06)
    [(got, _)] = await store.take_tokens([("resize", 10, 20.0, 3)])
    assert got >= 1
    assert await store.redis.pttl(store.keys.rate_bucket("resize")) > 0


FLOW = """
blueprint: one_task
start: work
states:
  work:
    task: resize
    on: {success: done}
  done: {end: finished}
"""


async def test_a_rate_limited_type_is_leased_only_against_tokens(
    store: Store, tmp_path: Path
) -> None:
    # Given an orchestrator limiting `resize` to a bucket of 2 (refilling slowly) and a
    # worker waiting with room for 5 tasks
    (tmp_path / "flow.yaml").write_text(FLOW, encoding="utf-8")
    registry = Registry(load_blueprints([tmp_path]), RuntimeSettings())
    limits = (RateLimit("resize", 0.01, 2),)
    orch = Orchestrator(store, registry, OrchestratorSettings(rate_limits=limits))
    await orch.start()
    try:
        poll = asyncio.create_task(orch.next_tasks("w1", ("resize",), 1.0, 5))
        await asyncio.sleep(0.05)  # the poll is open
        # When five jobs are submitted
        blueprint = registry.by_name["one_task"]
        for _ in range(5):
            await orch.submit(blueprint, {}, client="c")
        first = await poll
        second = await orch.next_tasks("w1", ("resize",), 0.5, 5)
        # Then the worker gets two tasks in all (the burst) and three stay queued
        assert len(first) + len(second) == 2
        assert (await store.queue_depths(["resize"]))["resize"] == 3
    finally:
        await orch.stop()
