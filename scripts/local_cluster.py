"""Start a local Redis Cluster to try Interlock on: three masters, three replicas.

    make cluster                      # or: .venv/bin/python scripts/local_cluster.py
    .venv/bin/python scripts/local_cluster.py --port 7101 [--once]

The nodes listen on 127.0.0.1, ports PORT to PORT+5 (their cluster bus on PORT+10000 and
up), without persistence, and are joined with `redis-cli --cluster create ...
--cluster-replicas 1`. The script prints the REDIS_URL to give `interlock serve`, then keeps
the cluster up until Ctrl-C (or, with --once, stops it again at once: a check that it
starts). It needs `redis-server` and `redis-cli` (apt-get install redis-server).
"""

from __future__ import annotations

import argparse
import shutil
import signal
import sys
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.support.redis_cluster import RedisCluster  # (after the path is set)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/local_cluster.py", description=__doc__)
    parser.add_argument("--port", type=int, default=7101, help="first port (default 7101)")
    parser.add_argument("--once", action="store_true", help="start, print, stop")
    args = parser.parse_args(argv)
    server, cli = shutil.which("redis-server"), shutil.which("redis-cli")
    if server is None or cli is None:
        print("redis-server and redis-cli are needed: apt-get install redis-server")
        return 1
    cluster = RedisCluster(server, cli, ports=[args.port + i for i in range(6)])
    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        cluster.start()
        masters = ", ".join(str(port) for port in cluster.masters())
        print(f"Redis Cluster up: masters on {masters}, each with one replica")
        print(f"REDIS_URL={cluster.url}", flush=True)
        if not args.once:
            print("Ctrl-C stops it.", flush=True)
            stop.wait()
    finally:
        cluster.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
