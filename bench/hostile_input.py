"""What one hostile request costs the orchestrator's event loop.

    .venv/bin/python -m bench.hostile_input [--on-loop] [REDOS_LENGTH [SKIP,...]]

(REDOS_LENGTH: the `a`s before the `!`, 24 by default; SKIP: comma-separated words, cases
whose name holds one are left out: useful on an older version, where some take hours.
--on-loop parses and checks every body on the event loop, as before server/offload.py:
run it and the default in turn to compare.)

Serves the example blueprints plus one with a hostile-looking `input_schema` (in process,
on a throwaway redis-server: the embedded `memory://` store would run Redis's Lua on the
loop, and count it), sends each request below once, and prints for each: the answer's status,
the request's wall time, and the longest the event loop was late meanwhile (a ticker task
that wants to run every millisecond), which is what every other client, heartbeat and lease
waits. Bodies are at most 1 MiB (MAX_BODY_BYTES). No figure is asserted anywhere.
"""

from __future__ import annotations

import asyncio
import json
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestClient, TestServer

from bench.harness import RedisServer
from server.app import build_app
from server.config import Settings
from server.offload import Offload
from server.state import OFFLOAD

ROOT = Path(__file__).resolve().parent.parent
MIB = 1 << 20

HOSTILE = """\
blueprint: hostile_schema
version: 1
api_endpoint: jobs/hostile_schema
input_schema:
  type: object
  properties:
    name: {type: string, pattern: "^(a+)+$"}
    tags: {type: array, uniqueItems: true}
    text: {type: string, maxLength: 100}
    pp:
      type: object
      patternProperties: {"^(x+x+)+y$": {type: string}}
      additionalProperties: {type: integer}
    choice: {enum: [[1, 2, 3], {a: [1, 2]}, "x"]}
    when: {type: string, format: date-time}
    big: {type: array, items: {type: number, maximum: 10}}
    tree: {$ref: "#/$defs/tree"}
  $defs:
    tree: {type: array, items: {$ref: "#/$defs/tree"}}
start: done
states:
  done: {end: finished}
"""


def cases(redos_length: int) -> dict[str, tuple[str, Callable[[], bytes]]]:
    """name -> (endpoint, body maker)."""

    def body(initial_data: Any) -> bytes:
        return json.dumps({"initial_data": initial_data}).encode()

    return {
        f"ReDoS ^(a+)+$, {redos_length} a + '!'": (
            "jobs/hostile_schema",
            lambda: body({"name": "a" * redos_length + "!"}),
        ),
        "uniqueItems, 4,000 objects": (
            "jobs/hostile_schema",
            lambda: body({"tags": [{"id": i, "v": [i]} for i in range(4000)]}),
        ),
        "uniqueItems, 1 MiB of small objects": (
            "jobs/hostile_schema",
            lambda: body({"tags": [{"i": i} for i in range(MIB // 14)]}),
        ),
        "pattern: 1 MiB of a + '!'": (
            "jobs/hostile_schema",
            lambda: body({"name": "a" * (MIB - 100) + "!"}),
        ),
        "uniqueItems, 1 MiB of nested lists": (
            "jobs/hostile_schema",
            lambda: body({"tags": [[[[i]]] for i in range(MIB // 14)]}),
        ),
        "patternProperties, 40k keys": (
            "jobs/hostile_schema",
            lambda: body({"pp": {"x" * 10 + str(i): i for i in range(40_000)}}),
        ),
        "enum, a 1 MiB list": (
            "jobs/hostile_schema",
            lambda: body({"choice": list(range(1, 130_000))}),
        ),
        "format date-time, 1 MiB string": (
            "jobs/hostile_schema",
            lambda: body({"when": "2026" * (MIB // 4 - 100)}),
        ),
        "maximum, 250 numbers of 4,000 digits": (
            "jobs/hostile_schema",
            lambda: ('{"initial_data": {"big": [' + ",".join(["9" * 4000] * 250) + "]}}").encode(),
        ),
        "$ref tree, 3,000 lists 95 levels deep": (
            "jobs/hostile_schema",
            lambda: body({"tree": [json.loads("[" * 95 + "]" * 95)] * 3000}),
        ),
        "1 MiB string over maxLength": (
            "jobs/hostile_schema",
            lambda: body({"text": "x" * (MIB - 100)}),
        ),
        "1 MiB flat object, 60k keys": (
            "jobs/reminder",
            lambda: body({"user": "u", **{f"k{i}": i for i in range(60_000)}}),
        ),
        "1 MiB list of numbers": (
            "jobs/reminder",
            lambda: body({"user": "u", "n": list(range(125_000))}),
        ),
        "3,000 lists 95 levels deep": (
            "jobs/reminder",
            lambda: body({"user": "u", "d": [json.loads("[" * 95 + "]" * 95)] * 3000}),
        ),
        "lone surrogates, 1 MiB": (
            "jobs/reminder",
            lambda: ('{"initial_data": {"user": "' + "\\ud800" * (MIB // 7) + '"}}').encode(),
        ),
    }


async def measure(
    client: TestClient[Any, Any], endpoint: str, data: bytes
) -> tuple[int, float, float]:
    late = 0.0
    stop = asyncio.Event()

    async def ticker() -> None:
        nonlocal late
        while not stop.is_set():
            before = time.perf_counter()
            await asyncio.sleep(0.001)
            late = max(late, time.perf_counter() - before - 0.001)

    tick = asyncio.create_task(ticker())
    await asyncio.sleep(0.01)
    start = time.perf_counter()
    headers = {"X-Client-Token": "bench", "Content-Type": "application/json"}
    async with client.post(f"/api/v1/{endpoint}", data=data, headers=headers) as response:
        await response.read()
        status = response.status
    took = time.perf_counter() - start
    stop.set()
    await tick
    return status, took, late


async def main(redos_length: int, skip: list[str], redis_url: str, on_loop: bool) -> None:
    with tempfile.TemporaryDirectory() as folder:
        blueprints = Path(folder)
        for example in (ROOT / "blueprints").glob("*.yaml"):
            (blueprints / example.name).write_text(example.read_text())
        (blueprints / "hostile.yaml").write_text(HOSTILE)
        settings = Settings.from_sources(
            {
                "BLUEPRINTS_DIR": str(blueprints),
                "CLIENT_TOKEN": "bench",
                "WORKER_TOKEN": "w",
                "REDIS_URL": redis_url,
            }
        )
        app = build_app(settings)
        if on_loop:
            app[OFFLOAD] = Offload(off_loop_bytes=1 << 62)
        client = TestClient(TestServer(app))
        await client.start_server()
        try:
            print(f"{'request':40} {'bytes':>9} {'status':>6} {'time':>9} {'loop late':>10}")
            for name, (endpoint, make) in cases(redos_length).items():
                if any(word and word in name for word in skip):
                    continue
                data = make()
                status, took, late = await measure(client, endpoint, data)
                print(
                    f"{name:40} {len(data):>9} {status:>6} {took:>8.3f}s {late:>9.3f}s", flush=True
                )
        finally:
            await client.close()


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if a != "--on-loop"]
    length = int(args[0]) if args else 24
    redis = RedisServer()
    redis.start()
    try:
        skip = args[1].split(",") if len(args) > 1 else []
        asyncio.run(main(length, skip, redis.url, "--on-loop" in sys.argv))
    finally:
        redis.stop()
