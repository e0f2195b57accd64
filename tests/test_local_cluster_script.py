"""`make cluster` (scripts/local_cluster.py) starts a cluster the server can use."""

from __future__ import annotations

import socket
import subprocess
import sys

import pytest

from tests.conftest import ROOT, require_program


def free_base_port() -> int:
    """A port P such that P..P+5 and their bus ports P+10000.. are free."""
    for base in range(21000, 40000, 97):
        try:
            sockets = []
            for port in [base + i for i in range(6)] + [base + 10000 + i for i in range(6)]:
                sock = socket.socket()
                sockets.append(sock)
                sock.bind(("127.0.0.1", port))
        except OSError:
            continue
        finally:
            for sock in sockets:
                sock.close()
        return base
    raise AssertionError("no free ports")


@pytest.mark.timeout(60)
def test_the_local_cluster_script_starts_a_cluster_and_prints_its_url() -> None:
    require_program("redis-server", "apt-get install redis-server")
    require_program("redis-cli", "apt-get install redis-tools")
    base = free_base_port()
    done = subprocess.run(
        [sys.executable, "scripts/local_cluster.py", "--port", str(base), "--once"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=50,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    nodes = ",".join(f"127.0.0.1:{base + i}" for i in range(6))
    assert f"REDIS_URL=redis+cluster://{nodes}" in done.stdout
    assert "Redis Cluster up: masters on" in done.stdout
