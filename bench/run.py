"""The throughput and latency benchmark of issue 6.

    .venv/bin/python -m bench.run [--workload linear3|noop|fanout|c1|all]
                                  [--store redis|memory|cluster|both] [-n N] [-c C] [-w W]
                                  [--partitions P] [--profile DIR] [--complete wait|webhook]
    .venv/bin/python -m bench.run --workload linear3 --compare metrics|webhook [--pairs 5]
                                  [--count instructions]
    .venv/bin/python -m bench.run --workload growth [--quick] [--budget S] [--backlog N]

For each workload and store it starts a fresh redis-server (for `redis`) on a free port,
`interlock serve` with the bench blueprints, W echo workers (bench.echo_worker, built on
worker_sdk) and submits N jobs over REST with C in flight, waiting for each with
`GET /api/v1/jobs/{id}?wait=30` (with `--complete webhook`: submitted with a `webhook_url`
of a receiver in the bench process, and waited for until its webhook arrives, signature
checked; `--compare webhook` runs both in interleaved pairs). After a warm-up it prints
jobs/s (N / wall time), p50/p95/p99 latency (submit -> terminal seen), the orchestrator's
CPU seconds (utime+stime from /proc) and CPU ms per job, its peak RSS (VmHWM), and Redis
commands per job (summed `calls` of INFO commandstats, before/after, / N). It exits 1 if
any job did not finish. `--store cluster` runs on a local Redis Cluster (bench/cluster.py)
and adds the commands per job per master and the spread of keys and commands over the
masters.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
import tempfile
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from bench import ab, growth
from bench import cluster as bench_cluster
from bench.blueprints import ENDPOINTS, write_blueprints
from bench.harness import (
    PARTITIONS,
    RedisServer,
    Server,
    WorkerProcess,
    command_calls,
    cpu_seconds,
    echo_workers,
    machine_cpu_seconds,
    machine_summary,
    peak_rss_mib,
    rss_mib,
    serve,
    wait_for_quiet,
)
from bench.instructions import Callgrind
from bench.instructions import missing as callgrind_missing
from bench.load import COMPLETIONS, LoadResult, Payload, percentile, run_load
from bench.profile import PySpy, summarise
from engine.store.keys import CLUSTER_PARTITIONS


def numbered(i: int) -> dict[str, Any]:
    return {"initial_data": {"n": i}}


FANOUT_ITEMS = list(range(100))


def _fanout(i: int) -> dict[str, Any]:
    return {"initial_data": {"items": FANOUT_ITEMS}}


@dataclass(frozen=True)
class Spec:
    name: str
    blueprint: str
    n: int  # on redis://
    n_memory: int  # on memory:// (embedded; it need not be fast, only complete)
    concurrency: int
    workers: int
    payload: Payload
    warmup: int


SPECS: dict[str, list[Spec]] = {
    "linear3": [Spec("linear3", "bench_linear3", 2000, 200, 50, 4, numbered, 100)],
    "noop": [Spec("noop", "bench_noop", 5000, 500, 50, 0, numbered, 100)],
    "fanout": [Spec("fanout", "bench_fanout", 20, 3, 1, 4, _fanout, 2)],
    "c1": [
        Spec("c1-linear3", "bench_linear3", 500, 50, 1, 4, numbered, 20),
        Spec("c1-noop", "bench_noop", 500, 50, 1, 0, numbered, 20),
    ],
}
ORDER = ["linear3", "noop", "fanout", "c1"]

# Workloads that are a suite of their own, run by their module instead of the table above.
SUITES: dict[str, Callable[[argparse.Namespace], int]] = {
    "growth": lambda args: growth.run(args.quick, args.budget, args.backlog, args.sections),
}


@dataclass
class Measurement:
    spec: Spec
    store: str
    n: int
    load: LoadResult
    warmup_not_finished: int
    cpu_s: float
    peak_rss_mib: float
    rss_mib: float
    redis_commands: Counter[str] | None  # INFO commandstats calls in the window, per command
    other_cpu_s: dict[str, float]  # CPU seconds of redis-server, the load generator, workers
    machine_cpu_s: float  # CPU seconds of every process on the machine, ours included
    irq_cpu_s: float  # of which in interrupts (loopback networking), charged to no process
    partitions: int = PARTITIONS
    master_commands: dict[int, Counter[str]] | None = None  # on a cluster, per master port
    master_keys: dict[int, int] | None = None
    master_cpu: dict[int, float] | None = None
    instructions: int | None = None  # the orchestrator's in the window (--count instructions)
    idle_instructions_per_s: float | None = None  # its rate after the window, nothing submitted

    @property
    def redis_calls(self) -> int | None:
        return None if self.redis_commands is None else sum(self.redis_commands.values())

    @property
    def not_finished(self) -> int:
        return self.load.not_finished + self.warmup_not_finished

    @property
    def cpu_ms_per_job(self) -> float:
        return 1000 * self.cpu_s / self.n

    @property
    def net_instructions_per_job(self) -> float | None:
        """Instructions a job, less the idle rate times the window's length (see
        bench/instructions.py)."""
        if self.instructions is None or self.idle_instructions_per_s is None:
            return None
        idle = self.idle_instructions_per_s * self.load.wall_s
        return (self.instructions - idle) / self.n

    @property
    def foreign_cpu_s(self) -> float:
        """CPU seconds of other processes on the machine in the window (should be ~0)."""
        ours = self.cpu_s + sum(self.other_cpu_s.values())
        return max(0.0, self.machine_cpu_s - ours - self.irq_cpu_s)

    def per_job(self, count: int | None) -> str:
        return "n/a" if count is None else f"{count / self.n:.1f}"

    def command_mix(self) -> str:
        """The commands per job, most frequent first (scripts' inner commands included)."""
        if self.redis_commands is None:
            return "n/a"
        return " ".join(
            f"{name}={count / self.n:.2f}" for name, count in self.redis_commands.most_common()
        )


# -- one measurement ---------------------------------------------------------------------------


@contextlib.contextmanager
def _redis(store: str) -> Iterator[RedisServer | bench_cluster.BenchCluster | None]:
    if store == "memory":
        yield None
        return
    server: RedisServer | bench_cluster.BenchCluster
    server = bench_cluster.BenchCluster() if store == "cluster" else RedisServer()
    try:
        server.start()
        yield server
    finally:
        server.stop()


def _cpu(groups: dict[str, list[int]]) -> dict[str, float]:
    return {name: sum(cpu_seconds(pid) for pid in pids) for name, pids in groups.items()}


async def _measure(
    spec: Spec,
    store: str,
    n: int,
    server: Server,
    redis: RedisServer | bench_cluster.BenchCluster | None,
    workers: list[WorkerProcess],
    profile: Path | None,
    partitions: int,
    complete: str,
    callgrind: Callgrind | None = None,
) -> Measurement:
    endpoint = ENDPOINTS[spec.blueprint]
    warm = await run_load(
        server.url, endpoint, spec.warmup, spec.concurrency, spec.payload, complete
    )
    if warm.not_finished:
        print(f"  warm-up: {warm.not_finished} of {warm.n} jobs did not finish: {warm.examples}")
    client = redis.client() if isinstance(redis, RedisServer) else None
    spy = None
    redis_pids: list[int] = []
    if isinstance(redis, bench_cluster.BenchCluster):
        redis_pids = redis.pids
    elif redis is not None:
        redis_pids = [redis.pid]
    others = {"redis": redis_pids, "loadgen": [os.getpid()]}
    masters_before = masters_after = None
    master_keys: dict[int, int] | None = None
    master_cpu: dict[int, float] | None = None
    master_cpu_before: dict[int, float] = {}
    others["workers"] = [w.process.pid for w in workers]
    try:
        if profile is not None:
            spy = PySpy(server.pid, profile / f"{spec.name}-{store}.txt")
            await asyncio.sleep(1.0)  # let py-spy attach
        before_redis = await command_calls(client) if client is not None else None
        if isinstance(redis, bench_cluster.BenchCluster):
            masters_before = await redis.calls_by_master()
            master_cpu_before = redis.cpu_by_master()
        if callgrind is not None:
            callgrind.start(server.pid)
        before_cpu = cpu_seconds(server.pid)
        before_others = _cpu(others)
        before_machine = machine_cpu_seconds()
        load = await run_load(server.url, endpoint, n, spec.concurrency, spec.payload, complete)
        instructions = callgrind.stop() if callgrind is not None else None
        idle_rate = await callgrind.idle_rate(IDLE_S) if callgrind is not None else None
        after_cpu = cpu_seconds(server.pid)
        after_others = _cpu(others)
        after_machine = machine_cpu_seconds()
        after_redis = await command_calls(client) if client is not None else None
        if isinstance(redis, bench_cluster.BenchCluster):
            masters_after = await redis.calls_by_master()
            master_cpu = {
                port: seconds - master_cpu_before.get(port, seconds)
                for port, seconds in redis.cpu_by_master().items()
            }
            master_keys = await redis.keys_by_master()
    finally:
        if spy is not None:
            spy.stop()
        if client is not None:
            await client.aclose()
    commands = None
    if before_redis is not None and after_redis is not None:
        commands = after_redis - before_redis
        commands["info"] -= 1  # the bench's own first INFO
        commands = +commands  # drop zeros
    master_commands = None
    if masters_before is not None and masters_after is not None:
        master_commands = bench_cluster.difference(masters_after, masters_before)
        commands = bench_cluster.total(master_commands)
    return Measurement(
        spec=spec,
        store=store,
        n=n,
        load=load,
        warmup_not_finished=warm.not_finished,
        cpu_s=after_cpu - before_cpu,
        other_cpu_s={k: after_others[k] - before_others[k] for k in others},
        machine_cpu_s=after_machine[0] - before_machine[0],
        irq_cpu_s=after_machine[1] - before_machine[1],
        peak_rss_mib=peak_rss_mib(server.pid),
        rss_mib=rss_mib(server.pid),
        redis_commands=commands,
        partitions=partitions,
        master_commands=master_commands,
        master_keys=master_keys,
        master_cpu=master_cpu,
        instructions=instructions,
        idle_instructions_per_s=idle_rate,
    )


def run_one(
    spec: Spec,
    store: str,
    n: int,
    profile: Path | None,
    quiet_wait_s: float,
    partitions: int,
    env: dict[str, str] | None = None,
    cprofile: Path | None = None,
    complete: str = "wait",
    count_instructions: bool = False,
) -> Measurement:
    if quiet_wait_s > 0:
        busy = wait_for_quiet(quiet_wait_s)
        if busy >= 0.15:
            print(f"  the machine is busy ({100 * busy:.0f}% of its CPUs) with other work")
    with tempfile.TemporaryDirectory(prefix="interlock-bench-") as tmp:
        workdir = Path(tmp)
        blueprints = write_blueprints(workdir / "blueprints")
        callgrind = Callgrind(workdir) if count_instructions else None
        prefix = callgrind.prefix() if callgrind is not None else []
        with _redis(store) as redis:
            url = redis.url if redis is not None else "memory://"
            with (
                serve(workdir, url, blueprints, env, partitions, cprofile, prefix) as server,
                echo_workers(workdir, server.url, spec.workers) as workers,
            ):
                measurement = asyncio.run(
                    _measure(
                        spec,
                        store,
                        n,
                        server,
                        redis,
                        workers,
                        profile,
                        partitions,
                        complete,
                        callgrind,
                    )
                )
                if measurement.not_finished or not server.alive():
                    print("  --- server log (tail) ---")
                    print("\n".join(server.output().splitlines()[-30:]))
                    for i, worker in enumerate(workers):
                        tail = worker.output().splitlines()[-10:]
                        if tail:
                            print(f"  --- worker {i} log (tail) ---")
                            print("\n".join(tail))
                return measurement


# -- report ------------------------------------------------------------------------------------

HEADER = (
    f"{'workload':<11} {'store':<6} {'N':>5} {'C':>3} {'W':>2} {'done':>5} {'!done':>5} "
    f"{'jobs/s':>7} {'p50 ms':>7} {'p95 ms':>7} {'p99 ms':>7} {'CPU s':>6} {'CPU ms/job':>10} "
    f"{'peak RSS MiB':>12} {'redis cmds/job':>14}"
)


def row(m: Measurement) -> str:
    load = m.load
    return (
        f"{m.spec.name:<11} {m.store:<6} {m.n:>5} {m.spec.concurrency:>3} {m.spec.workers:>2} "
        f"{load.finished:>5} {m.not_finished:>5} {load.jobs_per_s:>7.0f} "
        f"{load.percentile(50):>7.1f} {load.percentile(95):>7.1f} {load.percentile(99):>7.1f} "
        f"{m.cpu_s:>6.2f} {m.cpu_ms_per_job:>10.2f} {m.peak_rss_mib:>12.1f} "
        f"{m.per_job(m.redis_calls):>14}"
    )


CPU_HEADER = (
    f"{'workload':<11} {'store':<6} {'wall s':>6} {'orchestrator':>12} {'redis':>6} "
    f"{'workers':>7} {'loadgen':>7} {'bench':>6} {'irq':>5} {'foreign':>7} {'machine busy':>12}"
)


def cpu_row(m: Measurement) -> str:
    o = m.other_cpu_s
    ours = m.cpu_s + sum(o.values())
    foreign = m.foreign_cpu_s
    wall = m.load.wall_s
    capacity = wall * (os.cpu_count() or 1)
    busy = 100 * m.machine_cpu_s / capacity if capacity else 0.0
    return (
        f"{m.spec.name:<11} {m.store:<6} {wall:>6.2f} {m.cpu_s:>12.2f} {o['redis']:>6.2f} "
        f"{o['workers']:>7.2f} {o['loadgen']:>7.2f} {ours:>6.2f} {m.irq_cpu_s:>5.2f} "
        f"{foreign:>7.2f} {busy:>11.0f}%"
    )


def targets(m: Measurement) -> list[tuple[str, str, bool]]:
    """(target, measured, met) for the issue's targets that apply to this measurement."""
    load = m.load
    out: list[tuple[str, str, bool]] = []
    if m.store == "memory":
        return [("memory:// completes", f"{m.not_finished} not finished", m.not_finished == 0)]
    if m.spec.name == "linear3":
        out.append(("jobs/s >= 1000", f"{load.jobs_per_s:.0f}", load.jobs_per_s >= 1000))
        if m.redis_calls is not None:
            cmds = m.redis_calls / m.n
            out.append(("Redis cmds/job <= 10", f"{cmds:.1f}", cmds <= 10))
        cpu = m.cpu_ms_per_job
        out.append(("orchestrator CPU/job <= 1 ms", f"{cpu:.2f} ms", cpu <= 1))
    elif m.spec.name == "noop":
        out.append(("jobs/s >= 3000", f"{load.jobs_per_s:.0f}", load.jobs_per_s >= 3000))
    elif m.spec.name == "c1-linear3":
        p50 = load.percentile(50)
        out.append(("p50 <= 3 ms", f"{p50:.1f} ms", p50 <= 3))
    elif m.spec.name == "c1-noop":
        p50 = load.percentile(50)
        out.append(("p50 <= 1.5 ms", f"{p50:.1f} ms", p50 <= 1.5))
    elif m.spec.name == "fanout":
        worst = max(load.latencies_ms, default=float("inf"))
        out.append(("every 100-branch job <= 500 ms", f"max {worst:.0f} ms", worst <= 500))
    out.append(("every job finished", f"{m.not_finished} not finished", m.not_finished == 0))
    return out


def report(results: list[Measurement]) -> None:
    print()
    print(HEADER)
    for m in results:
        print(row(m))
    print()
    print("redis cmds/job: summed INFO commandstats calls / N, commands run inside Lua scripts")
    print(
        "included (workers' heartbeats and the orchestrator's background loops too). Per command:"
    )
    for m in results:
        if m.redis_commands is not None:
            print(f"  {m.spec.name:<11} {m.command_mix()}")
    print()
    print("p50/p95 ms by the job's store partition (a fair dispatcher serves them alike):")
    for m in results:
        if m.spec.concurrency > 1 and m.store != "memory":
            groups = m.load.by_partition(m.partitions)
            cells = " ".join(
                f"p{p}={percentile(lat, 50):.0f}/{percentile(lat, 95):.0f}"
                for p, lat in groups.items()
            )
            if len(groups) > 16:  # one line: the range over the partitions
                p50s = [percentile(lat, 50) for lat in groups.values() if lat]
                p95s = [percentile(lat, 95) for lat in groups.values() if lat]
                cells = (
                    f"{len(groups)} partitions: p50 {min(p50s):.0f}..{max(p50s):.0f}, "
                    f"p95 {min(p95s):.0f}..{max(p95s):.0f}"
                )
            print(f"  {m.spec.name:<11} {cells}")
    print()
    print(
        "CPU seconds in the measured window: the bench's processes; irq = interrupts "
        "(loopback TCP), charged to no process; foreign = other processes on the machine "
        "(should be ~0: figures taken while it is not are disturbed)"
    )
    print(CPU_HEADER)
    for m in results:
        print(cpu_row(m))
    print()
    print(f"{'workload':<11} {'store':<6} {'target':<32} {'measured':<18} verdict")
    for m in results:
        for target, measured, met in targets(m):
            verdict = "met" if met else "NOT MET"
            print(f"{m.spec.name:<11} {m.store:<6} {target:<32} {measured:<18} {verdict}")
    spread = [
        (m.spec.name, m.n, m.master_commands, m.master_keys or {}, m.master_cpu or {})
        for m in results
        if m.master_commands is not None
    ]
    if spread:
        bench_cluster.report(spread)
    for m in results:
        if m.load.examples:
            print(f"{m.spec.name} ({m.store}) problems, first few: {m.load.examples}")


def _spec(args: argparse.Namespace, spec: Spec) -> Spec:
    """`spec` with the -c and -w overrides applied."""
    if args.c is not None and not spec.name.startswith("c1"):
        spec = replace(spec, concurrency=args.c)
    if args.w is not None and spec.workers > 0:
        spec = replace(spec, workers=args.w)
    return spec


INSTRUCTIONS_N = 300  # jobs a --count instructions run measures by default
INSTRUCTIONS_C = 10  # and jobs in flight
IDLE_S = 5.0  # seconds after its window that a --count instructions run counts idle


def compare(args: argparse.Namespace) -> int:
    """--compare: interleaved A/B pairs of one workload on one Redis (bench/ab.py)."""
    if args.workload not in SPECS or len(SPECS[args.workload]) != 1:
        print(f"--compare needs one workload of {[k for k, v in SPECS.items() if len(v) == 1]}")
        return 2
    spec = SPECS[args.workload][0]
    counting = args.count == "instructions"
    if counting and (why := callgrind_missing()) is not None:
        print(f"--count instructions: {why}")
        return 2
    if counting:  # under valgrind fewer requests at once, so none waits past its timeout
        spec = replace(spec, concurrency=INSTRUCTIONS_C, workers=min(spec.workers, 2))
    spec = _spec(args, spec)
    default_n = INSTRUCTIONS_N if counting else spec.n  # valgrind runs it 20-50x slower
    n = args.n if args.n is not None else default_n
    partitions = args.partitions or PARTITIONS
    quiet = args.quiet_wait or 0.0

    def measure(env: Mapping[str, str], side: str, pair: int) -> ab.Run:
        settings = dict(env)
        complete = settings.pop(ab.COMPLETE, args.complete)
        m = run_one(
            spec,
            "redis",
            n,
            None,
            quiet,
            partitions,
            settings,
            complete=complete,
            count_instructions=counting,
        )
        return ab.Run(
            side=side,
            pair=pair,
            jobs_per_s=m.load.jobs_per_s,
            cpu_ms_per_job=m.cpu_ms_per_job,
            redis_cmds_per_job=None if m.redis_calls is None else m.redis_calls / m.n,
            not_finished=m.not_finished,
            foreign_cpu_s=m.foreign_cpu_s,
            instructions_per_job=None if m.instructions is None else m.instructions / m.n,
            net_instructions_per_job=m.net_instructions_per_job,
        )

    runs = ab.run_pairs(
        args.compare, f"{spec.name} N={n} C={spec.concurrency}", args.pairs, measure
    )
    ab.report(args.compare, runs)
    failed = sum(r.not_finished for r in runs)
    if failed:
        print(f"FAILED: {failed} job(s) did not finish")
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.run", description="Interlock throughput and latency benchmark"
    )
    parser.add_argument("--workload", choices=[*ORDER, *SUITES, "all"], default="all")
    parser.add_argument("--store", choices=["redis", "memory", "cluster", "both"], default="both")
    parser.add_argument(
        "--partitions",
        type=int,
        help="REDIS_PARTITIONS for the server (default: the store's default, "
        f"{PARTITIONS} on one Redis, {CLUSTER_PARTITIONS} on a cluster)",
    )
    parser.add_argument("-n", type=int, help="jobs per workload (default: per workload)")
    parser.add_argument("-c", type=int, help="jobs in flight (c1 always uses 1)")
    parser.add_argument("-w", type=int, help="worker processes (noop always uses 0)")
    parser.add_argument(
        "--wait-replicas",
        type=int,
        default=0,
        metavar="R",
        help="REDIS_WAIT_REPLICAS for the server (cluster: each master has one replica)",
    )
    parser.add_argument(
        "--profile", type=Path, metavar="DIR", help="py-spy the orchestrator into DIR"
    )
    parser.add_argument(
        "--cprofile",
        type=Path,
        metavar="DIR",
        help="run the orchestrator under cProfile (the whole run, slower), writing "
        "DIR/<workload>-<store>.prof; summarise with python -m bench.profile",
    )
    parser.add_argument(
        "--quiet-wait",
        type=float,
        metavar="S",
        help="before each workload, wait up to S seconds for other processes to leave the "
        "CPUs idle (default 120; 0 with --compare, whose pairs are interleaved instead; "
        "0: do not wait)",
    )
    parser.add_argument(
        "--compare",
        choices=sorted(ab.COMPARISONS),
        help="run the workload in interleaved A/B pairs with this setting off and on, and "
        "print the on/off ratios (redis store)",
    )
    parser.add_argument("--pairs", type=int, default=5, help="A/B pairs for --compare")
    parser.add_argument(
        "--complete",
        choices=COMPLETIONS,
        default="wait",
        help="how the load generator learns that a job ended: GET ?wait= (default), or its "
        "webhook, POSTed to a receiver in the bench process",
    )
    parser.add_argument(
        "--count",
        choices=["instructions"],
        help="with --compare: also count the orchestrator's instructions per job in the "
        "window, running it under valgrind's callgrind (slow: N, C and W default to "
        f"{INSTRUCTIONS_N}, {INSTRUCTIONS_C} and 2)",
    )
    growth_flags = parser.add_argument_group("--workload growth")
    growth_flags.add_argument("--quick", action="store_true", help="small sizes only")
    growth_flags.add_argument(
        "--budget", type=float, metavar="S", help="seconds a point may take (180; quick 30)"
    )
    growth_flags.add_argument(
        "--backlog", type=int, metavar="N", help="jobs queued before the workers start"
    )
    growth_flags.add_argument(
        "--sections",
        type=lambda text: text.split(","),
        default=list(growth.SECTIONS),
        help=f"comma-separated, of {','.join(growth.SECTIONS)} (default: all)",
    )
    args = parser.parse_args(argv)

    if args.workload in SUITES:
        unknown = set(args.sections) - set(growth.SECTIONS)
        if unknown:
            parser.error(f"--sections: unknown {sorted(unknown)}; use {list(growth.SECTIONS)}")
        return SUITES[args.workload](args)
    if args.compare is not None:
        return compare(args)
    if args.quiet_wait is None:
        args.quiet_wait = 120.0

    for folder in (args.profile, args.cprofile):
        if folder is not None:
            folder.mkdir(parents=True, exist_ok=True)
    names = ORDER if args.workload == "all" else [args.workload]
    stores = ["redis", "memory"] if args.store == "both" else [args.store]
    print(f"machine: {machine_summary()}")
    results: list[Measurement] = []
    for store in stores:
        for name in names:
            for spec in SPECS[name]:
                spec = _spec(args, spec)
                n = (
                    args.n
                    if args.n is not None
                    else (spec.n_memory if store == "memory" else spec.n)
                )
                print(
                    f"running {spec.name} on {store}: N={n} C={spec.concurrency} "
                    f"W={spec.workers} complete={args.complete} ...",
                    flush=True,
                )
                env = {"REDIS_WAIT_REPLICAS": str(args.wait_replicas)}
                partitions = args.partitions or (
                    CLUSTER_PARTITIONS if store == "cluster" else PARTITIONS
                )
                cprofile = args.cprofile and args.cprofile / f"{spec.name}-{store}.prof"
                m = run_one(
                    spec,
                    store,
                    n,
                    args.profile,
                    args.quiet_wait,
                    partitions,
                    env,
                    cprofile,
                    args.complete,
                )
                print(row(m), flush=True)
                results.append(m)
    report(results)
    for folder, pattern in ((args.profile, "*.txt"), (args.cprofile, "*.prof")):
        for path in sorted(folder.glob(pattern)) if folder is not None else []:
            print(summarise(path, top=20))
    failed = sum(m.not_finished for m in results)
    if failed:
        print(f"FAILED: {failed} job(s) did not finish")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
