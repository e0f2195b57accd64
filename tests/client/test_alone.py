"""`interlock[client]` works without the server: interlock_client imports nothing of the
engine, the server, the worker SDK or their dependencies. Proven in a fresh interpreter where
importing any of them fails, making real calls to a real server."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from tests.client.conftest import Live
from tests.support.processes import ROOT

BLOCKED = (
    # Interlock's other packages
    "engine",
    "server",
    "worker_sdk",
    "interlock_cli",
    # the server's dependencies, and the core's (the blueprint language)
    "redis",
    "hiredis",
    "fakeredis",
    "lupa",
    "orjson",
    "uvloop",
    "croniter",
    "prometheus_client",
    "yaml",
    "jsonschema",
    "re2",
    "networkx",
    "pydot",
    "jmespath",
)

SCRIPT = """
import asyncio, sys

class Blocker:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"{name} is blocked: the client must not need it")
        return None

sys.meta_path.insert(0, Blocker())

from interlock_client import AsyncClient, Client, NotFound

with Client(URL, TOKEN) as client:
    job_id = client.submit("jobs/echo", {"n": 3}).job_id
    print("sync", client.wait(job_id, timeout=30)["result"])

async def main():
    async with AsyncClient(URL, TOKEN) as client:
        job_id = (await client.submit("jobs/echo", {"n": 4})).job_id
        print("async", (await client.wait(job_id, timeout=30))["result"])
        try:
            await client.get("nope")
        except NotFound as exc:
            print("error", exc.code)

asyncio.run(main())
print("loaded", sorted({m.split(".")[0] for m in sys.modules} & set(BLOCKED)))
"""


def test_the_client_runs_with_the_server_packages_unimportable(live: Live) -> None:
    prelude = f"BLOCKED = {BLOCKED!r}\nURL = {live.url!r}\nTOKEN = {live.token!r}\n"
    done = subprocess.run(
        [sys.executable, "-c", prelude + textwrap.dedent(SCRIPT)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "sync {'n': 3}",
        "async {'n': 4}",
        "error job_not_found",
        "loaded []",
    ]


def test_the_blocker_does_block() -> None:
    """The check above could pass vacuously if the hook blocked nothing: it must stop an
    import of the server."""
    script = textwrap.dedent(SCRIPT).split("from interlock_client")[0]
    done = subprocess.run(
        [sys.executable, "-c", f"BLOCKED = {BLOCKED!r}\n{script}\nimport server.app"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert "server is blocked" in done.stderr
