"""A Redis without persistence restarts under a running orchestrator: every job is gone, and
the orchestrator must say so (ERROR in its log, `store_wiped` in /_public/status) instead of
carrying on silently. With AOF the same restart keeps the jobs and raises no alarm."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from engine.store.client import Store, StoreUnavailable
from tests.conftest import require_program
from tests.e2e.test_jobs_over_http import client, submit
from tests.support.processes import serve
from tests.support.redis_server import RedisServer

pytestmark = pytest.mark.timeout(120)


async def status_of(http: aiohttp.ClientSession, *, reconnecting: bool = False) -> dict[str, Any]:
    async with http.get("/_public/status") as resp:
        if reconnecting and resp.status == 503:  # a pooled connection the restart closed
            return {"status": "reconnecting"}
        assert resp.status == 200, await resp.text()
        body: dict[str, Any] = await resp.json()
        return body


async def test_a_wiped_store_is_reported(tmp_path: Path) -> None:
    redis = RedisServer(require_program("redis-server", "apt-get install redis-server"))
    redis.start()
    try:
        with serve(tmp_path, redis.url) as server:
            async with client(server) as http:
                # given an orchestrator with an accepted job, on a Redis without persistence
                await submit(http, "jobs/reminder", {"user": "ada"})
                assert await status_of(http) == {"status": "ok", "store": "reachable"}
                # when that Redis restarts (empty)
                redis.kill()
                redis.start()
                # then the orchestrator reports the wipe within a few checks
                deadline = time.monotonic() + 20
                status = await status_of(http, reconnecting=True)
                while status["status"] != "store_wiped" and time.monotonic() < deadline:
                    await asyncio.sleep(0.05)  # polling, with a deadline (as `eventually`)
                    status = await status_of(http, reconnecting=True)
            log = server.output()
    finally:
        redis.stop()
    assert status["status"] == "store_wiped", status
    assert status["store_wiped_at"].endswith("Z")
    assert "appendonly yes" in status["message"]
    assert "ERROR" in log, log
    assert "the job store was wiped" in log, log


async def marker_intact(store: Store) -> bool:
    """`check_marker`, past the error of a pooled connection the restart closed."""
    for _ in range(3):
        try:
            return await store.check_marker()
        except StoreUnavailable:
            continue
    raise AssertionError("the store stayed unreachable")


async def test_a_restart_with_aof_is_not_a_wipe(tmp_path: Path) -> None:
    binary = require_program("redis-server", "apt-get install redis-server")
    redis = RedisServer(binary, ("--appendonly", "yes", "--appendfsync", "always"))
    redis.start()
    try:
        store = await Store.connect(redis.url, partitions=4)
        try:
            assert await store.check_marker()
            redis.kill()
            redis.start()  # the marker comes back from the AOF
            assert await marker_intact(store)
            assert store.wiped_at is None
        finally:
            await store.close()
        # and one that is flushed is noticed, also by a process that did not write the marker
        first = await Store.connect(redis.url, partitions=4)
        second = await Store.connect(redis.url, partitions=4)
        try:
            assert first.marker == second.marker
            await first.redis.flushall()
            assert not await second.check_marker()
            assert not await first.check_marker()  # rewritten by `second`: another marker
        finally:
            await first.close()
            await second.close()
    finally:
        redis.stop()
