"""`interlock serve` as a real process: start, answer, stop on SIGTERM; refuse bad setups."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import sys
from pathlib import Path

import aiohttp

from tests.server.helpers import BLUEPRINTS, EXAMPLES, ROOT

INTERLOCK = Path(sys.executable).parent / "interlock"  # the console script of this venv
LISTENING = re.compile(
    r"^Interlock listening on http://127\.0\.0\.1:(\d+) \(store: memory:// embedded, "
    r"(\d+) blueprints\)$"
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without any Interlock setting, plus `extra`."""
    names = ("REDIS_", "API_", "CLIENT", "WORKER", "BLUEPRINTS_DIR", "MAX_", "JOB_", "HEARTBEAT")
    env = {k: v for k, v in os.environ.items() if not k.startswith(names)}
    return {**env, **extra}


async def run_to_exit(*args: str, env: dict[str, str]) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        str(INTERLOCK),
        "serve",
        *args,
        env=env,
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(30):
        out, err = await process.communicate()
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_serve_starts_answers_and_stops_on_sigterm() -> None:
    # Given `interlock serve` on a free port, with no client token configured
    port = free_port()
    process = await asyncio.create_subprocess_exec(
        str(INTERLOCK),
        "serve",
        "--port",
        str(port),
        "--redis-url",
        "memory://",
        "--blueprints",
        str(BLUEPRINTS),
        env=clean_env(WORKER_TOKEN="w"),
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert process.stdout is not None
    assert process.stderr is not None
    try:
        # When it has started, it prints one listening line
        async with asyncio.timeout(30):
            line = (await process.stdout.readline()).decode().rstrip("\n")
        match = LISTENING.match(line)
        assert match, line
        assert int(match.group(1)) == port
        assert int(match.group(2)) == EXAMPLES
        # And a token generated for this run (the only way to learn it), once
        async with asyncio.timeout(5):
            notice = (await process.stderr.readline()).decode()
        found = re.match(r"no CLIENT_TOKEN set; using generated token (\S+) \(shared", notice)
        assert found, notice
        # Then a client with that token is served
        async with aiohttp.ClientSession() as session:
            url = f"http://127.0.0.1:{port}/api/v1/blueprints"
            async with session.get(url, headers={"X-Client-Token": found.group(1)}) as response:
                assert response.status == 200
                assert len((await response.json())["blueprints"]) == EXAMPLES
            async with session.get(url, headers={"X-Client-Token": "guess"}) as response:
                assert response.status == 401
        # And SIGTERM stops it cleanly
        process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(20):
            code = await process.wait()
        assert code == 0
        rest = (await process.stderr.read()).decode()
        assert "Traceback" not in rest
        assert "no WORKER_TOKEN" not in rest
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def test_bad_clients_file_exits_2_naming_file_and_line(tmp_path: Path) -> None:
    clients = tmp_path / "clients.toml"
    clients.write_text('[acme]\ntoken = "a"\n\n[beta]\ntokn = "b"\n', encoding="utf-8")
    code, out, err = await run_to_exit(
        "--port", str(free_port()), env=clean_env(CLIENTS_CONFIG_PATH=str(clients))
    )
    assert code == 2
    assert out == ""
    assert err == f'interlock serve: {clients}:4: [beta] has no token; add token = "..."\n'


async def test_malformed_toml_and_bad_values_exit_2(tmp_path: Path) -> None:
    workers = tmp_path / "workers.toml"
    workers.write_text('[w1]\ntoken = "a\n', encoding="utf-8")
    code, _, err = await run_to_exit(
        "--workers-config",
        str(workers),
        "--port",
        "99999",
        env=clean_env(HEARTBEAT_TIMEOUT="1 min"),
    )
    assert code == 2
    lines = err.splitlines()
    assert lines[0].startswith(f"interlock serve: {workers}:2:")
    assert "--port: 99999 is out of range" in err
    assert "HEARTBEAT_TIMEOUT: '1 min' is not a duration" in err
    assert "Traceback" not in err


async def test_invalid_blueprints_exit_1_listing_each_problem(tmp_path: Path) -> None:
    (tmp_path / "bad.yaml").write_text(
        "blueprint: bad\nstart: a\nstates:\n  a: {task: t, on: {success: nowhere}}\n",
        encoding="utf-8",
    )
    code, out, err = await run_to_exit(
        "--blueprints", str(tmp_path), "--port", str(free_port()), env=clean_env()
    )
    assert code == 1
    assert out == ""
    assert re.search(rf"^{re.escape(str(tmp_path / 'bad.yaml'))}:4:\d+: \$\.states\.a", err, re.M)
    assert "interlock serve: 1 error(s) in the blueprints" in err


async def test_unreachable_store_exits_1_without_the_password() -> None:
    url = f"redis://:hunter2@127.0.0.1:{free_port()}/0"
    code, out, err = await run_to_exit(
        "--redis-url", url, "--port", str(free_port()), env=clean_env()
    )
    assert code == 1
    assert out == ""
    assert "hunter2" not in err
    assert err.startswith("interlock serve: cannot use the store at redis://:***@127.0.0.1:")


async def test_validate_does_not_need_aiohttp() -> None:
    """`interlock validate` must work where only the blueprint dependencies are installed."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        "import sys, interlock_cli; interlock_cli.build_parser(); "
        "print(sorted(m for m in ('aiohttp', 'server', 'redis') if m in sys.modules))",
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
    )
    out, _ = await process.communicate()
    assert out.decode().strip() == "[]"
