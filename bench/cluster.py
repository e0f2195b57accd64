"""`bench.run --store cluster`: the bench on a local Redis Cluster (3 masters, 3 replicas).

The cluster is the one the tests start (tests/support/redis_cluster.py). Besides the usual
figures, the bench reads `INFO commandstats` and `DBSIZE` on every master, so it can print
Redis commands per job per node and how the keys and the commands spread over the masters.
"""

from __future__ import annotations

import shutil
from collections import Counter
from collections.abc import Sequence

import redis.asyncio as aioredis

from bench.harness import BENCH_CLIENT_NAME, command_calls, cpu_seconds
from tests.support.redis_cluster import RedisCluster


class BenchCluster:
    """A throwaway 3+3 Redis Cluster on free loopback ports, without persistence."""

    def __init__(self) -> None:
        server, cli = shutil.which("redis-server"), shutil.which("redis-cli")
        if server is None or cli is None:
            raise RuntimeError("redis-server and redis-cli must be on the PATH")
        self.cluster = RedisCluster(server, cli)

    def start(self) -> None:
        self.cluster.start()

    def stop(self) -> None:
        self.cluster.stop()

    @property
    def url(self) -> str:
        return self.cluster.url

    @property
    def pids(self) -> list[int]:
        return [node.process.pid for node in self.cluster.nodes if node.process is not None]

    def masters(self) -> list[int]:
        return self.cluster.masters()

    async def calls_by_master(self) -> dict[int, Counter[str]]:
        """INFO commandstats `calls` per command on each master (one INFO each)."""
        out = {}
        for port in self.masters():
            async with aioredis.Redis(
                port=port, decode_responses=True, client_name=BENCH_CLIENT_NAME
            ) as client:
                out[port] = await command_calls(client)
        return out

    def cpu_by_master(self) -> dict[int, float]:
        """CPU seconds (utime + stime) of each master's redis-server process."""
        return {port: cpu_seconds(self.pid_of(port)) for port in self.masters()}

    def pid_of(self, port: int) -> int:
        process = self.cluster.node(port).process
        assert process is not None
        return process.pid

    async def keys_by_master(self) -> dict[int, int]:
        out = {}
        for port in self.masters():
            async with aioredis.Redis(port=port, decode_responses=True) as client:
                out[port] = int(await client.dbsize())
        return out


def spread_lines(
    name: str, n: int, calls: dict[int, Counter[str]], keys: dict[int, int], cpu: dict[int, float]
) -> list[str]:
    """Per master: commands per job, share of the commands, share of the keys, CPU per job."""
    total_calls = sum(sum(c.values()) for c in calls.values()) or 1
    total_keys = sum(keys.values()) or 1
    lines = []
    for port in sorted(calls):
        count = sum(calls[port].values())
        lines.append(
            f"  {name:<11} master :{port}  cmds/job {count / n:5.2f}  "
            f"commands {100 * count / total_calls:5.1f}%  keys {keys.get(port, 0):>6} "
            f"({100 * keys.get(port, 0) / total_keys:5.1f}%)  "
            f"CPU {1e6 * cpu.get(port, 0.0) / n:6.1f} us/job"
        )
    return lines


def difference(
    after: dict[int, Counter[str]], before: dict[int, Counter[str]]
) -> dict[int, Counter[str]]:
    """Commands in the window per master, without the bench's own INFO."""
    out = {}
    for port, counts in after.items():
        window = counts - before.get(port, Counter())
        window["info"] -= 1
        out[port] = +window
    return out


def total(per_master: dict[int, Counter[str]]) -> Counter[str]:
    summed: Counter[str] = Counter()
    for counts in per_master.values():
        summed.update(counts)
    return summed


Row = tuple[str, int, dict[int, Counter[str]], dict[int, int], dict[int, float]]


def report(rows: Sequence[Row]) -> None:
    print()
    print(
        "Redis Cluster, per master: commands per job (scripts' inner commands included), "
        "share of the commands, keys left at the end (DBSIZE) and their share, and the "
        "master's CPU per job:"
    )
    for name, n, calls, keys, cpu in rows:
        for line in spread_lines(name, n, calls, keys, cpu):
            print(line)
