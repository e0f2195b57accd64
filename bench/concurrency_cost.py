"""What a concurrency key costs a job in Redis: commands and bytes, over the job's life.

    .venv/bin/python -m bench.concurrency_cost [-n 2000] [--per-key 10]

Starts its own redis-server, then runs N jobs of a blueprint without `concurrency` and N of
the same blueprint with `concurrency: {key: "${ initial_data.customer }", limit: 10}` (one
key per `--per-key` jobs, so every job is admitted at once and nothing waits), through the
orchestrator (the very scripts the server uses). Each job waits for a person, then is
approved and finishes. It prints, per job: the Redis commands run to create it and to end
it (INFO commandstats, Lua's included, follow-up steps awaited), and the memory Redis holds
for it while it runs and once it ended (`used_memory` differences divided by N).
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
from collections import Counter
from pathlib import Path

from bench.harness import RedisServer, command_calls
from engine.blueprint.loader import load_blueprints
from engine.runtime.host import OrchestratorSettings
from engine.runtime.jobdoc import RuntimeSettings
from engine.runtime.orchestrator import Orchestrator
from engine.runtime.registry import Registry
from engine.store.client import Store

FLOW = """
blueprint: {name}
{concurrency}
start: review
states:
  review:
    approval: {{message: "ok?"}}
    on: {{approve: done}}
  done: {{end: finished}}
"""
KEYED = 'concurrency: {key: "${ initial_data.customer }", limit: 10}'


async def measure(
    url: str, folder: Path, name: str, n: int, per_key: int
) -> tuple[Counter[str], Counter[str], int, int]:
    """(commands to create, commands to end, bytes running, bytes ended) for `n` jobs."""
    store = await Store.connect(url, partitions=8)
    registry = Registry(load_blueprints([folder]), RuntimeSettings())
    orch = Orchestrator(store, registry, OrchestratorSettings())
    blueprint = registry.by_name[name]
    await orch.submit(blueprint, {"customer": "warm-up"}, client="bench")  # keys exist
    await orch.join()
    await store.redis.config_resetstat()
    memory = int((await store.redis.info("memory"))["used_memory"])
    before = await command_calls(store.redis)
    ids = [
        await orch.submit(blueprint, {"customer": f"c{i // per_key:05d}"}, client="bench")
        for i in range(n)
    ]
    await orch.join()
    created = await command_calls(store.redis)
    running = int((await store.redis.info("memory"))["used_memory"])
    for job_id in ids:
        await orch.decide(job_id, None, "approve")
    await orch.join()
    ended = await command_calls(store.redis)
    after = int((await store.redis.info("memory"))["used_memory"])
    await store.redis.flushall()
    await store.close()
    create, end = created - before, ended - created
    for calls in (create, end):
        calls.pop("info", None)
    return create, end, running - memory, after - memory


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=2000, help="jobs per measurement")
    parser.add_argument("--per-key", type=int, default=10, help="jobs per concurrency key")
    args = parser.parse_args()
    redis = RedisServer()
    redis.start()
    try:
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder)
            (path / "plain.yaml").write_text(FLOW.format(name="plain", concurrency=""))
            (path / "keyed.yaml").write_text(FLOW.format(name="keyed", concurrency=KEYED))
            plain = await measure(redis.url, path, "plain", args.n, args.per_key)
            keyed = await measure(redis.url, path, "keyed", args.n, args.per_key)
    finally:
        redis.stop()
    n = args.n
    print(f"{n} jobs each, {args.per_key} jobs a key (limit 10: none waits)")
    for what, calls, with_key in (("create", plain[0], keyed[0]), ("end", plain[1], keyed[1])):
        print(f"commands to {what} a job without a key: {sum(calls.values()) / n:.2f}")
        print(f"commands to {what} a job with a key:    {sum(with_key.values()) / n:.2f}")
        extra = with_key - calls
        print("  extra:", {k: round(v / n, 2) for k, v in sorted(extra.items())})
    for what, alone, keyed_bytes in (
        ("running", plain[2], keyed[2]),
        ("ended", plain[3], keyed[3]),
    ):
        print(
            f"bytes a job {what}: {alone / n:.0f} without a key, {keyed_bytes / n:.0f} with "
            f"(extra {(keyed_bytes - alone) / n:.0f})"
        )


if __name__ == "__main__":
    asyncio.run(main())
