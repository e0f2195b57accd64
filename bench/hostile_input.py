"""What one hostile request costs the orchestrator's event loop.

    .venv/bin/python -m bench.hostile_input [--on-loop] [REDOS_LENGTH [SKIP,...]]

(REDOS_LENGTH: the `a`s before the `!`, 24 by default; SKIP: comma-separated words, cases
whose name holds one are left out: useful on an older version, where some take hours.
--on-loop sets CHECK_OFF_LOOP_BYTES so that every body is parsed and checked on the event
loop, as before server/offload.py: run it and the default in turn to compare.)

Starts a redis-server and `interlock serve` (processes of their own) with the example
blueprints plus one with a hostile-looking `input_schema`, sends each request below once,
and prints for each: the answer's status, the request's wall time, and how long the server
was held: the slowest answer to `GET /_public/status`, which another client asks over and
over meanwhile (what every other client, heartbeat and lease waits). Bodies are at most
1 MiB (MAX_BODY_BYTES). No figure is asserted anywhere.
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

import aiohttp

from bench.harness import CLIENT_TOKEN, RedisServer, serve

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


Row = tuple[int, float, float]  # status, the request's time, how long the server was held


async def measure(http: aiohttp.ClientSession, base: str, endpoint: str, data: bytes) -> Row:
    """Send one request; meanwhile another client asks for the server's status over and over
    (one at a time): the slowest of those answers is how long the server was held."""
    slowest = 0.0
    done = asyncio.Event()

    async def probe() -> None:
        nonlocal slowest
        while not done.is_set():
            before = time.perf_counter()
            async with http.get(f"{base}/_public/status") as response:
                await response.read()
            slowest = max(slowest, time.perf_counter() - before)

    prober = asyncio.create_task(probe())
    start = time.perf_counter()
    headers = {"X-Client-Token": CLIENT_TOKEN, "Content-Type": "application/json"}
    async with http.post(f"{base}/api/v1/{endpoint}", data=data, headers=headers) as response:
        await response.read()
        status = response.status
    took = time.perf_counter() - start
    done.set()
    await prober
    return status, took, slowest


async def send_all(base: str, redos_length: int, skip: list[str]) -> None:
    connector = aiohttp.TCPConnector(limit=4)
    timeout = aiohttp.ClientTimeout(total=600)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as http:
        print(f"{'request':40} {'bytes':>9} {'status':>6} {'time':>9} {'held':>9}")
        for name, (endpoint, make) in cases(redos_length).items():
            if any(word and word in name for word in skip):
                continue
            data = make()
            status, took, held = await measure(http, base, endpoint, data)
            print(f"{name:40} {len(data):>9} {status:>6} {took:>8.3f}s {held:>8.3f}s", flush=True)


def main(argv: list[str]) -> None:
    args = [a for a in argv if a != "--on-loop"]
    length = int(args[0]) if args else 24
    skip = args[1].split(",") if len(args) > 1 else []
    # --on-loop: no body is large enough to go to the check threads
    env = {"CHECK_OFF_LOOP_BYTES": str(1 << 40)} if "--on-loop" in argv else {}
    redis = RedisServer()
    redis.start()
    try:
        with tempfile.TemporaryDirectory() as folder:
            workdir = Path(folder)
            blueprints = workdir / "blueprints"
            blueprints.mkdir()
            for example in (ROOT / "blueprints").glob("*.yaml"):
                (blueprints / example.name).write_text(example.read_text())
            (blueprints / "hostile.yaml").write_text(HOSTILE)
            with serve(workdir, redis.url, blueprints, env, partitions=None) as server:
                asyncio.run(send_all(server.url, length, skip))
    finally:
        redis.stop()


if __name__ == "__main__":
    main(sys.argv[1:])
