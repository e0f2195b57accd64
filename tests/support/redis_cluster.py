"""A real Redis Cluster for tests: three masters and three replicas on free ports.

The nodes are `redis-server --cluster-enabled yes` processes joined with
`redis-cli --cluster create ... --cluster-replicas 1`, as an operator would do it. Tests may
fail a master over, kill one, or move slots; `heal()` brings the cluster back to six live
nodes with full slot coverage for the next test.
"""

from __future__ import annotations

import random
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass

from tests.support.redis_server import RedisServer

MASTERS = 3


class ClusterError(RuntimeError):
    pass


def free_cluster_port() -> int:
    """A free port whose cluster bus port (port + 10000) is free too."""
    for _ in range(200):
        port = random.randint(20000, 50000)
        try:
            with socket.socket() as a, socket.socket() as b:
                a.bind(("127.0.0.1", port))
                b.bind(("127.0.0.1", port + 10000))
        except OSError:
            continue
        return port
    raise ClusterError("no free port pair for a cluster node")


@dataclass(frozen=True, slots=True)
class NodeInfo:
    port: int
    role: str  # "master" or "slave"
    slots: int  # number of slots this master serves
    failed: bool


def wait_for(check: Callable[[], bool], what: str, within_s: float = 30) -> None:
    """Poll `check` until it holds (the cluster converges by gossip: there is no event to
    wait on), or raise naming `what`."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise ClusterError(f"timed out waiting for {what}")


class RedisCluster:
    def __init__(
        self,
        server_binary: str,
        cli_binary: str,
        masters: int = MASTERS,
        ports: list[int] | None = None,
    ) -> None:
        self.cli = cli_binary
        extra = (
            "--cluster-enabled",
            "yes",
            "--cluster-node-timeout",
            "1000",  # a killed master is noticed within ~1-2 s
            "--cluster-replica-validity-factor",
            "0",  # a replica may always take over, however long it was cut off
        )
        # Each node keeps its nodes.conf in its own --dir, so a killed node restarts as
        # the same cluster member (it then rejoins as a replica of whoever took over).
        self.nodes = [RedisServer(server_binary, extra) for _ in range(masters * 2)]
        for i, node in enumerate(self.nodes):
            node.port = ports[i] if ports else free_cluster_port()

    @property
    def ports(self) -> list[int]:
        return [node.port for node in self.nodes]

    @property
    def url(self) -> str:
        """The Interlock URL of this cluster: every node as a seed."""
        return "redis+cluster://" + ",".join(f"127.0.0.1:{p}" for p in self.ports)

    def node_url(self, port: int) -> str:
        return f"redis://127.0.0.1:{port}/0"

    def run_cli(self, *args: str, timeout: float = 60) -> str:
        done = subprocess.run(
            [self.cli, *args], capture_output=True, text=True, timeout=timeout, check=False
        )
        if done.returncode != 0:
            raise ClusterError(f"redis-cli {' '.join(args)}: {done.stdout}{done.stderr}")
        return done.stdout

    def node_cli(self, port: int, *args: str) -> str:
        return self.run_cli("-h", "127.0.0.1", "-p", str(port), *args, timeout=10)

    def start(self) -> None:
        for node in self.nodes:
            node.start()
        self.run_cli(
            "--cluster",
            "create",
            *(f"127.0.0.1:{p}" for p in self.ports),
            "--cluster-replicas",
            "1",
            "--cluster-yes",
        )
        self.wait_healthy()

    def alive(self) -> list[RedisServer]:
        return [node for node in self.nodes if node.process is not None]

    def cluster_info(self, port: int) -> dict[str, str]:
        try:
            out = self.node_cli(port, "CLUSTER", "INFO")
        except (ClusterError, subprocess.TimeoutExpired):
            return {}
        lines = (line.strip() for line in out.splitlines() if ":" in line)
        return {name: value for name, _, value in (line.partition(":") for line in lines)}

    def topology(self, port: int) -> list[NodeInfo]:
        """Every node as `port` sees it (CLUSTER NODES)."""
        out = self.node_cli(port, "CLUSTER", "NODES")
        nodes = []
        for line in out.splitlines():
            fields = line.split()
            if len(fields) < 8:
                continue
            node_port = int(fields[1].split("@")[0].rsplit(":", 1)[1])
            flags = fields[2].split(",")
            slots = 0
            for part in fields[8:]:
                if part.startswith("["):
                    continue  # a slot being imported or migrated
                low, _, high = part.partition("-")
                slots += int(high or low) - int(low) + 1
            role = "master" if "master" in flags else "slave"
            nodes.append(NodeInfo(node_port, role, slots, "fail" in flags or "fail?" in flags))
        return nodes

    def masters(self) -> list[int]:
        """Ports of the live masters that serve slots."""
        live = {node.port for node in self.alive()}
        seen = self.topology(next(iter(live)))
        return sorted(n.port for n in seen if n.role == "master" and n.slots and n.port in live)

    def replica_of(self, master_port: int) -> int:
        """The port of a live replica of `master_port`."""
        for node in self.alive():
            info = self.node_cli(node.port, "INFO", "replication")
            if "role:slave" in info and f"master_port:{master_port}" in info:
                return node.port
        raise ClusterError(f"no live replica of {master_port}")

    def healthy(self) -> bool:
        """Every live node says cluster_state:ok and sees full slot coverage, and every
        live replica's link to its master is up (so that WAIT 1 can be answered)."""
        for node in self.alive():
            info = self.cluster_info(node.port)
            if info.get("cluster_state") != "ok" or info.get("cluster_slots_ok") != "16384":
                return False
            try:
                replication = self.node_cli(node.port, "INFO", "replication")
            except (ClusterError, subprocess.TimeoutExpired):
                return False
            if "role:slave" in replication and "master_link_status:up" not in replication:
                return False
        return True

    def wait_healthy(self, within_s: float = 30) -> None:
        wait_for(self.healthy, "cluster_state:ok on every node", within_s)

    def node(self, port: int) -> RedisServer:
        return next(node for node in self.nodes if node.port == port)

    def heal(self) -> None:
        """Restart killed nodes (they rejoin as replicas), wait until every node is ok."""
        for node in self.nodes:
            if node.process is None:
                node.start()
        self.wait_healthy()
        wait_for(
            lambda: (
                all(not n.failed and n.port in self.ports for n in self.topology(self.ports[0]))
                and len(self.topology(self.ports[0])) == len(self.nodes)
            ),
            "every node to be seen as healthy",
        )

    def node_id(self, port: int) -> str:
        return self.node_cli(port, "CLUSTER", "MYID").strip()

    def role(self, port: int) -> str:
        info = self.node_cli(port, "INFO", "replication")
        return "master" if "role:master" in info else "slave"

    def failover(self, replica_port: int) -> None:
        """CLUSTER FAILOVER on a replica: it takes over once it has caught up (no loss)."""
        self.node_cli(replica_port, "CLUSTER", "FAILOVER")
        wait_for(lambda: self.role(replica_port) == "master", f"{replica_port} to take over")
        self.wait_healthy()

    def kill_master(self, port: int) -> int:
        """SIGKILL a master; returns the port of the replica that takes over."""
        replica = self.replica_of(port)
        self.node(port).kill()
        wait_for(lambda: self.role(replica) == "master", f"{replica} to be promoted")
        self.wait_healthy()
        return replica

    def reshard(self, source: int, target: int, slots: int) -> None:
        """Move `slots` slots, keys included, from one master to another, as an operator
        would (`redis-cli --cluster reshard`); returns when they have moved."""
        self.run_cli(
            "--cluster",
            "reshard",
            f"127.0.0.1:{source}",
            "--cluster-from",
            self.node_id(source),
            "--cluster-to",
            self.node_id(target),
            "--cluster-slots",
            str(slots),
            "--cluster-yes",
            timeout=120,
        )
        self.wait_healthy()

    def flush(self) -> None:
        for port in self.masters():
            self.node_cli(port, "FLUSHALL")

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()
