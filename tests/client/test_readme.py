"""The README's client and job-command examples, run as written against a real server with
the example blueprints and the README's example worker (only the server's address differs:
the test's server listens on a free port)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.processes import ROOT, Server, serve
from tests.worker_sdk.support import fast_env, worker_process

pytestmark = pytest.mark.timeout(120)

README = (ROOT / "README.md").read_text()
EXAMPLE_WORKER = ROOT / "worker_sdk" / "examples" / "example_worker.py"
README_URL = "http://127.0.0.1:8080"
TOKEN = "dev-client-token"


def block(language: str, first_line: str) -> str:
    """The README's one code block in `language` that starts with `first_line`."""
    blocks: list[str] = re.findall(rf"```{language}\n(.*?)```", README, re.DOTALL)
    found = [b for b in blocks if b.startswith(first_line)]
    assert len(found) == 1, f"README: {len(found)} {language} blocks start with {first_line!r}"
    return found[0]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp_path = tmp_path_factory.mktemp("readme")
    with (
        serve(tmp_path, "memory://", env={"CLIENT_TOKEN": TOKEN}) as running,
        worker_process(
            tmp_path, "readme-examples", fast_env(ORCHESTRATOR_URL=running.url), EXAMPLE_WORKER
        ),
    ):
        yield running


def run(server: Server, command: list[str]) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "CLIENT_TOKEN"}
    env.update(INTERLOCK_URL=server.url, INTERLOCK_CLIENT_TOKEN=TOKEN)
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT, timeout=90)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    return done


def test_the_job_commands_run_as_written(server: Server) -> None:
    script = block("sh", "export INTERLOCK_URL=").replace(README_URL, server.url)
    script = script.replace(".venv/bin/", f"{Path(sys.executable).parent}/")

    done = run(server, ["bash", "-e", "-o", "pipefail", "-c", script])

    assert '"status": "finished"' in done.stdout  # submit --wait printed the ended job
    assert '"thumbnail": "https://cdn.example.com/thumb-' in done.stdout
    lines = done.stdout.splitlines()
    assert any(line.startswith("approval   Approve 12.5 for ada?") for line in lines)
    assert any(": waiting for approval" in line for line in lines)  # explain
    assert any(": approve decided; now " in line for line in lines)
    assert any(" finished at paid " in line for line in lines)  # watch, to the end
    table = lines[lines.index(next(line for line in lines if line.startswith("ID "))) + 1 :]
    assert table
    assert {tuple(row.split()[1:3]) for row in table} == {("expense_approval", "finished")}


def test_the_python_examples_run_as_written(server: Server, tmp_path: Path) -> None:
    sync = tmp_path / "client_example.py"
    sync.write_text(block("python", "# client_example.py").replace(README_URL, server.url))
    aio = tmp_path / "async_client_example.py"
    aio.write_text(block("python", "# async_client_example.py"))

    blocking = run(server, [sys.executable, str(sync)]).stdout.splitlines()
    following = run(server, [sys.executable, str(aio)]).stdout.splitlines()

    assert blocking[0].startswith("finished {'thumbnail': 'https://cdn.example.com/thumb-")
    assert blocking[1].split()[1:] == ["job_created", "fetch"]
    assert blocking[-2].split()[1:] == ["job_finished", "done"]
    assert blocking[-1].startswith("409 not_waiting_for_approval ")
    assert following[0] == "waiting_for_human review"
    assert following[-1] == "finished paid"
