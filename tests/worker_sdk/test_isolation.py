"""A worker installs only what it needs: the SDK never imports the server or the engine."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.support.processes import ROOT

PROBE = """
import json, sys
import worker_sdk
from worker_sdk import Worker
import worker_sdk.s3  # the S3 module itself, as a worker with S3 offloading loads it

worker = Worker()
@worker.task("plain")
async def plain(params, ctx):
    return {}
loaded = sorted({name.split(".")[0] for name in sys.modules})
after_plain = "jsonschema" in sys.modules
@worker.task("typed", input_schema={"type": "object"})
async def typed(params, ctx):
    return {}
print(json.dumps({"loaded": loaded, "jsonschema_before_schema": after_plain,
                  "jsonschema_after_schema": "jsonschema" in sys.modules}))
"""


def test_the_sdk_imports_neither_engine_nor_server() -> None:
    """Imported in a fresh interpreter, with every module of the SDK loaded, neither the
    server's packages nor its optional helpers are there; jsonschema only once a skill
    declares an input_schema."""
    out = subprocess.run(
        [sys.executable, "-c", PROBE], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    report = json.loads(out)
    loaded = set(report["loaded"])
    assert "worker_sdk" in loaded
    assert not loaded & {"engine", "server", "redis", "fakeredis", "networkx", "pydot", "yaml"}
    assert report["jsonschema_before_schema"] is False
    assert report["jsonschema_after_schema"] is True


def test_importing_the_package_does_not_load_aioboto3() -> None:
    probe = "import sys, worker_sdk; print('aioboto3' in sys.modules, 'aiobotocore' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    assert out.split() == ["False", "False"]
