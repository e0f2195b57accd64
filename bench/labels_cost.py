"""What labels cost a job in Redis: commands and bytes.

    .venv/bin/python -m bench.labels_cost [-n 2000] [--labels 2] [--per-value 10]

Starts its own redis-server, then creates N jobs without labels and N jobs with `--labels`
labels (`customer`, `region`, ... each with a value of about 6 characters, one `customer`
value per `--per-value` jobs: 1 makes it unique to its job), through the orchestrator (the
very commit script the server uses), and prints, per job: the Redis commands run (INFO
commandstats, Lua's included), and the memory Redis holds for it (`used_memory` after minus
before, divided by N). The jobs wait for a person (`expense_approval`), so nothing else
happens to them while they are counted.
"""

from __future__ import annotations

import argparse
import asyncio
from collections import Counter
from pathlib import Path

from bench.harness import RedisServer, command_calls
from engine.blueprint.loader import load_blueprints
from engine.runtime.orchestrator import Orchestrator
from engine.runtime.registry import Registry
from engine.store.client import Store
from server.app import orchestrator_settings, runtime_settings
from server.config import Settings

ROOT = Path(__file__).resolve().parent.parent
VALUES = ("customer", "region", "team", "source", "batch", "owner", "env", "tier")


def labels_of(i: int, count: int, per_value: int) -> dict[str, str] | None:
    if count == 0:
        return None
    values = {"customer": f"c{i // per_value:05d}"}
    values.update({name: f"{name[:3]}-{i % 7}" for name in VALUES[1:count]})
    return values


async def measure(url: str, n: int, count: int, per_value: int) -> tuple[Counter[str], int]:
    """(commands, bytes) for `n` jobs with `count` labels each, on a flushed Redis."""
    settings = Settings.from_sources({"BLUEPRINTS_DIR": str(ROOT / "blueprints")}, {})
    store = await Store.connect(url, partitions=8)
    registry = Registry(load_blueprints([ROOT / "blueprints"]), runtime_settings(settings))
    orch = Orchestrator(store, registry, orchestrator_settings(settings))
    blueprint = registry.by_name["expense_approval"]
    data = {"amount": 10, "employee": "ada"}
    await orch.submit(blueprint, data, client="bench")  # the partition's keys exist already
    await store.redis.config_resetstat()
    before_memory = int((await store.redis.info("memory"))["used_memory"])
    before = await command_calls(store.redis)
    for i in range(n):
        await orch.submit(blueprint, data, client="bench", labels=labels_of(i, count, per_value))
    after = await command_calls(store.redis)
    memory = int((await store.redis.info("memory"))["used_memory"]) - before_memory
    await store.redis.flushall()
    await store.close()
    calls = after - before
    calls.pop("info", None)
    return calls, memory


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=2000, help="jobs per measurement")
    parser.add_argument("--labels", type=int, default=2, help=f"labels a job (1-{len(VALUES)})")
    parser.add_argument("--per-value", type=int, default=10, help="jobs per customer value")
    args = parser.parse_args()
    redis = RedisServer()
    redis.start()
    try:
        plain_calls, plain_bytes = await measure(redis.url, args.n, 0, 1)
        label_calls, label_bytes = await measure(redis.url, args.n, args.labels, args.per_value)
    finally:
        redis.stop()
    extra = label_calls - plain_calls
    print(f"{args.n} jobs each, {args.labels} labels a job, {args.per_value} jobs a customer")
    print(f"commands a job without labels: {sum(plain_calls.values()) / args.n:.2f}")
    print(f"commands a job with labels:    {sum(label_calls.values()) / args.n:.2f}")
    print("extra commands a job:", {k: round(v / args.n, 2) for k, v in sorted(extra.items())})
    print(f"bytes a job without labels: {plain_bytes / args.n:.0f}")
    print(f"bytes a job with labels:    {label_bytes / args.n:.0f}")
    print(f"extra bytes a job: {(label_bytes - plain_bytes) / args.n:.0f}")


if __name__ == "__main__":
    asyncio.run(main())
