"""How many connections an idle worker_sdk worker holds to its orchestrator: the README's
sizing rule for MAX_CONNECTIONS (2 x workers + 256 descriptors) rests on it."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.test_jobs_over_http import client
from tests.support.processes import ROOT, WORKER_TOKEN, serve

pytestmark = pytest.mark.timeout(60)

ESTABLISHED = "01"


def connections(pid: int, port: int) -> int:
    """The established TCP connections process `pid` has to `port` on this machine."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:  # closed meanwhile
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:[") : -1])
    found = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            remote_port = int(fields[2].rsplit(":", 1)[1], 16)
            if fields[3] == ESTABLISHED and remote_port == port and fields[9] in inodes:
                found += 1
    return found


def idle_worker(tmp_path: Path, url: str) -> subprocess.Popen[bytes]:
    """A worker_sdk worker (bench.echo_worker) with a long poll and frequent heartbeats."""
    env = {
        **os.environ,
        "ORCHESTRATOR_URL": url,
        "WORKER_TOKEN": WORKER_TOKEN,
        "WORKER_ID": "idle-1",
        "WORKER_POLL_TIMEOUT": "30",  # its poll stays open while we look
        "WORKER_HEARTBEAT_INTERVAL": "0.1",  # and heartbeats come often meanwhile
    }
    with (tmp_path / "worker.log").open("wb") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "bench.echo_worker"],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )


async def test_an_idle_sdk_worker_holds_its_poll_and_one_more_connection(
    tmp_path: Path,
) -> None:
    with serve(tmp_path, "memory://") as server:
        worker = idle_worker(tmp_path, server.url)
        try:
            async with client(server) as http:
                # given a worker that has heartbeated several times while its poll is open
                beats: set[str] = set()
                async with asyncio.timeout(30):
                    while len(beats) < 5:
                        async with http.get("/api/v1/workers") as resp:
                            listed = (await resp.json())["workers"]
                        beats |= {w["last_heartbeat"] for w in listed if w["last_heartbeat"]}
                        await asyncio.sleep(0.05)  # polling the view, with a deadline
            # then it holds two connections: its long poll, and the kept-alive one its
            # heartbeats go over (not one per heartbeat)
            seen = set()
            for _ in range(20):
                seen.add(connections(worker.pid, server.port))
                await asyncio.sleep(0.05)  # sampling over a few heartbeats
            assert seen == {2}, seen
        finally:
            worker.kill()
            worker.wait(timeout=10)
