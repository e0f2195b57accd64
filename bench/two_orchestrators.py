"""linear3 on one orchestrator and on two sharing one Redis, in interleaved pairs.

    .venv/bin/python -m bench.two_orchestrators [--pairs 3] [-n 2000] [-c 50] [-w 4]

Side A runs one `interlock serve`; side B runs two on the same fresh redis-server. The load
(C jobs in flight, each submitted and waited for with `?wait=` on the same orchestrator) and
the echo workers (`bench/echo_worker.py`) are split evenly between B's two orchestrators.
Each run starts fresh processes; the side that goes first alternates from pair to pair. It
prints one row per run, with the orchestrators' CPU summed, then the ratio B/A of every pair
for each figure, and the Redis commands by name of the last pair.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import tempfile
from collections import Counter
from pathlib import Path

from bench import ab
from bench.blueprints import ENDPOINTS, write_blueprints
from bench.harness import (
    RedisServer,
    Server,
    command_calls,
    cpu_seconds,
    echo_workers,
    machine_cpu_seconds,
    machine_summary,
    serve,
)
from bench.load import LoadResult, run_load
from bench.run import numbered

ENDPOINT = ENDPOINTS["bench_linear3"]
WARMUP = 100


async def _measure(
    servers: list[Server], redis: RedisServer, n: int, concurrency: int
) -> tuple[list[LoadResult], float, float, float, Counter[str]]:
    """Warm up, then run n jobs split over the servers: (loads, wall s, orchestrator CPU s,
    CPU s of the rest of the machine, Redis commands by name)."""
    share = len(servers)

    async def load(jobs: int) -> list[LoadResult]:
        return list(
            await asyncio.gather(
                *(
                    run_load(s.url, ENDPOINT, jobs // share, concurrency // share, numbered)
                    for s in servers
                )
            )
        )

    await load(WARMUP)
    client = redis.client()
    try:
        before = await command_calls(client)
        cpu_before = sum(cpu_seconds(s.pid) for s in servers)
        machine_before = machine_cpu_seconds()[0]
        loads = await load(n)
        cpu = sum(cpu_seconds(s.pid) for s in servers) - cpu_before
        machine = machine_cpu_seconds()[0] - machine_before
        commands = await command_calls(client) - before
    finally:
        await client.aclose()
    commands["info"] -= 1  # the bench's own first INFO
    wall = max(r.wall_s for r in loads)
    return loads, wall, cpu, machine - cpu, +commands


def measure(
    orchestrators: int, side: str, pair: int, n: int, c: int, w: int
) -> tuple[ab.Run, Counter[str]]:
    """One run on fresh processes: the figures, and the Redis commands by name."""
    with (
        tempfile.TemporaryDirectory(prefix="interlock-bench-") as tmp,
        contextlib.ExitStack() as st,
    ):
        workdir = Path(tmp)
        blueprints = write_blueprints(workdir / "blueprints")
        redis = RedisServer()
        redis.start()
        st.callback(redis.stop)
        servers = []
        for i in range(orchestrators):
            (workdir / f"serve-{i}").mkdir()
            (workdir / f"workers-{i}").mkdir()
            server = st.enter_context(serve(workdir / f"serve-{i}", redis.url, blueprints))
            st.enter_context(echo_workers(workdir / f"workers-{i}", server.url, w // orchestrators))
            servers.append(server)
        loads, wall, cpu, others, commands = asyncio.run(_measure(servers, redis, n, c))
    done = sum(r.finished for r in loads)
    for problem in [e for r in loads for e in r.examples][:3]:
        print(f"  not finished: {problem}")
    run = ab.Run(
        side=side,
        pair=pair,
        jobs_per_s=done / wall if wall else 0.0,
        cpu_ms_per_job=1000 * cpu / max(done, 1),
        redis_cmds_per_job=sum(commands.values()) / max(done, 1),
        not_finished=sum(r.not_finished for r in loads),
        foreign_cpu_s=others,
    )
    return run, commands


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.two_orchestrators")
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("-n", type=int, default=2000, help="jobs per run")
    parser.add_argument("-c", type=int, default=50, help="jobs in flight")
    parser.add_argument("-w", type=int, default=4, help="echo worker processes")
    args = parser.parse_args(argv)
    print(f"machine: {machine_summary()}")
    print(f"linear3 N={args.n} C={args.c} W={args.w}: A = one orchestrator, B = two on one "
          f"Redis; {args.pairs} pairs, first side alternating")  # fmt: skip
    print(f"{'pair':>4} {'side':<4} {'jobs/s':>7} {'CPU ms/job':>10} {'cmds/job':>8} "
          f"{'!done':>5} {'other CPU s':>11}")  # fmt: skip
    runs: list[ab.Run] = []
    mixes: dict[str, Counter[str]] = {}
    for pair in range(1, args.pairs + 1):
        for side in ("A", "B") if pair % 2 else ("B", "A"):
            run, mixes[side] = measure(1 if side == "A" else 2, side, pair, args.n, args.c, args.w)
            runs.append(run)
            print(
                f"{pair:>4} {side:<4} {run.jobs_per_s:>7.0f} {run.cpu_ms_per_job:>10.3f} "
                f"{run.redis_cmds_per_job or 0:>8.1f} {run.not_finished:>5} "
                f"{run.foreign_cpu_s:>11.2f}",
                flush=True,
            )
    # A pair with a job not finished compares nothing: its figures are left out.
    broken = {r.pair for r in runs if r.not_finished}
    whole = [r for r in runs if r.pair not in broken]
    left_out = f" (pairs {sorted(broken)} left out: jobs not finished)" if broken else ""
    print(f"\nratios B/A (two orchestrators / one), one per pair{left_out}:")
    for name, figure in ab.FIGURES.items():
        print(f"  {name:<24} {ab.summary(ab.ratios(whole, figure))}")
    print("\nRedis commands per job by name, last pair:")
    for side, mix in sorted(mixes.items()):
        done = args.n - next(r.not_finished for r in reversed(runs) if r.side == side)
        shown = " ".join(f"{k}={v / max(done, 1):.2f}" for k, v in mix.most_common(12))
        print(f"  {side}: {shown}")
    return 1 if any(r.not_finished for r in runs) else 0


if __name__ == "__main__":
    raise SystemExit(main())
