"""Processes for the benchmarks: a real redis-server, `interlock serve`, echo workers.

Everything listens on loopback on free ports; every process is started here and stopped by
its own pid. Process figures come from /proc (Linux only).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import redis.asyncio as aioredis

from engine.store.keys import DEFAULT_PARTITIONS
from tests.support import processes
from tests.support.processes import Server as Server  # what serve() yields
from tests.support.redis_server import RedisServer as TestRedisServer

ROOT = Path(__file__).resolve().parents[1]
CLIENT_TOKEN = "bench-client-token"
WORKER_TOKEN = "bench-worker-token"
WEBHOOK_SECRET = "bench-webhook-secret"
PARTITIONS = DEFAULT_PARTITIONS  # a single Redis's default (bench.run --partitions)
BENCH_CLIENT_NAME = "interlock-bench"  # the bench's own Redis connections carry this name
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


# -- /proc -------------------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """utime + stime of `pid` (not its children), in seconds."""
    text = Path(f"/proc/{pid}/stat").read_text()
    fields = text[text.rindex(")") + 2 :].split()  # after "pid (comm) "; field 3 is fields[0]
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # fields 14 and 15 of stat(5)


def machine_cpu_seconds() -> tuple[float, float]:
    """(busy, irq) CPU seconds of the whole machine from /proc/stat's cpu line: busy is every
    non-idle second; irq the part spent in hard and soft interrupts, which no process is
    charged for (loopback TCP is largely processed there)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    busy = user + nice + system + irq + softirq + steal
    return busy / CLOCK_TICKS, (irq + softirq) / CLOCK_TICKS


def wait_for_quiet(max_wait_s: float, busy_below: float = 0.15) -> float:
    """Wait (at most `max_wait_s`) until the machine is quiet: less than `busy_below` of its
    CPUs busy over one second. Returns the busy share last seen. Call it before starting
    the bench's own processes: every busy CPU second then belongs to someone else."""
    cores = os.cpu_count() or 1
    deadline = time.monotonic() + max_wait_s
    while True:
        before = machine_cpu_seconds()[0]
        time.sleep(1.0)
        busy = (machine_cpu_seconds()[0] - before) / cores
        if busy < busy_below or time.monotonic() >= deadline:
            return busy
        time.sleep(2.0)


def status_kib(pid: int, key: str) -> int:
    """A `kB` line of /proc/<pid>/status, e.g. VmRSS or VmHWM."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def rss_mib(pid: int) -> float:
    return status_kib(pid, "VmRSS") / 1024


def peak_rss_mib(pid: int) -> float:
    return status_kib(pid, "VmHWM") / 1024


def machine_summary() -> str:
    model = "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem_gib = 0.0
    with contextlib.suppress(OSError, ValueError, IndexError):
        first = Path("/proc/meminfo").read_text().splitlines()[0]  # MemTotal: N kB
        mem_gib = int(first.split()[1]) / 1024 / 1024
    return (
        f"{os.cpu_count()} CPUs ({model}), {mem_gib:.1f} GiB RAM, Python {sys.version.split()[0]}"
    )


# -- redis-server ------------------------------------------------------------------------------


class RedisServer(TestRedisServer):
    """A throwaway redis-server on a free loopback port, without persistence, that accepts
    enough clients for the idle-worker bench."""

    def __init__(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not on the PATH (apt-get install redis-server)")
        super().__init__(binary, extra_args=("--maxclients", "10000"))

    @property
    def pid(self) -> int:
        if self.process is None:
            raise RuntimeError("redis-server is not running")
        return self.process.pid

    def client(self) -> aioredis.Redis:
        """A client for the bench's own queries, named so it can be told apart."""
        return aioredis.Redis.from_url(
            self.url, decode_responses=True, client_name=BENCH_CLIENT_NAME
        )


async def command_calls(client: aioredis.Redis) -> Counter[str]:
    """`calls` per command from INFO commandstats (one INFO command, counted next time).

    Commands that Lua scripts run are counted as well as the EVALSHA that ran them (Redis 7
    counts them in total_commands_processed too, so there is no separate round-trip count)."""
    stats = await client.info("commandstats")
    return Counter(
        {
            key.removeprefix("cmdstat_"): int(value["calls"])
            for key, value in stats.items()
            if isinstance(value, dict)
        }
    )


# -- interlock serve ---------------------------------------------------------------------------


@contextlib.contextmanager
def serve(
    workdir: Path,
    store_url: str,
    blueprints: Path,
    env: Mapping[str, str] | None = None,
    partitions: int | None = PARTITIONS,
    cprofile: Path | None = None,
    prefix: Sequence[str] = (),
) -> Iterator[Server]:
    """`interlock serve` as a subprocess (the tests' launcher, with the bench's settings),
    stopped with SIGTERM on exit. With `cprofile`, it runs under cProfile, which writes its
    statistics there when the server exits (`python -m bench.profile FILE` reads them).
    `prefix` runs the interpreter under another program (bench/instructions.py's valgrind)."""
    settings = {
        "CLIENT_TOKEN": CLIENT_TOKEN,
        "WORKER_TOKEN": WORKER_TOKEN,
        "WEBHOOK_SECRET": WEBHOOK_SECRET,
        "WEBHOOK_ALLOW": "127.0.0.1",  # the load generator's webhook receiver (bench/load.py)
        "LOG_LEVEL": "WARNING",
        **({"REDIS_PARTITIONS": str(partitions)} if partitions else {}),
        **(env or {}),
    }
    python_args = ("-m", "cProfile", "-o", str(cprofile)) if cprofile is not None else ()
    with processes.serve(
        workdir,
        store_url,
        blueprints,
        settings,
        graceful=True,
        python_args=python_args,
        prefix=prefix,
    ) as server:
        yield server


# -- echo workers ------------------------------------------------------------------------------


@dataclass
class WorkerProcess:
    process: subprocess.Popen[bytes]
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")


@contextlib.contextmanager
def echo_workers(
    workdir: Path, url: str, count: int, *, slots: int = 200, poll_s: float = 1.0
) -> Iterator[list[WorkerProcess]]:
    """`count` processes of bench.echo_worker (worker_sdk), stopped on exit."""
    workers: list[WorkerProcess] = []
    try:
        for i in range(count):
            log = workdir / f"worker-{i}.log"
            environment = {
                **os.environ,
                "ORCHESTRATOR_URL": url,
                "WORKER_TOKEN": WORKER_TOKEN,
                "WORKER_ID": f"bench-echo-{i}",
                "MAX_CONCURRENT_TASKS": str(slots),
                "WORKER_POLL_TIMEOUT": f"{poll_s:g}",
                "WORKER_SHUTDOWN_TIMEOUT": "1",
                "LOG_LEVEL": "WARNING",
            }
            with log.open("wb") as sink:
                process = subprocess.Popen(
                    [sys.executable, "-m", "bench.echo_worker"],
                    cwd=ROOT,
                    env=environment,
                    stdout=sink,
                    stderr=subprocess.STDOUT,
                )
            workers.append(WorkerProcess(process, log))
        yield workers
    finally:
        for worker in workers:
            if worker.process.poll() is None:
                worker.process.send_signal(signal.SIGTERM)
        for worker in workers:
            try:
                worker.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                worker.process.kill()
                worker.process.wait(timeout=10)
