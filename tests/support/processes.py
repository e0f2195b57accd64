"""Real `interlock serve` and worker processes for end-to-end tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

from tests.support.redis_server import free_port

ROOT = Path(__file__).resolve().parents[2]
CLIENT_TOKEN = "test-client-token"
WORKER_TOKEN = "test-worker-token"


class Server:
    def __init__(self, process: subprocess.Popen[bytes], port: int, log: Path) -> None:
        self.process = process
        self.port = port
        self.log = log

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> None:
        """SIGTERM (a graceful shutdown), then SIGKILL if it takes over 15 s."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.kill()

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs, as when a machine dies."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=10)

    def terminate(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=20)


def _wait_ready(server: Server, deadline_s: float = 60) -> None:
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"interlock serve exited early:\n{server.output()}")
        try:
            with urllib.request.urlopen(f"{server.url}/_public/status", timeout=1) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.1)
    raise RuntimeError(f"interlock serve did not become ready:\n{server.output()}")


@contextmanager
def serve(
    tmp_path: Path,
    redis_url: str,
    blueprints: Path = ROOT / "blueprints",
    env: Mapping[str, str] | None = None,
    *,
    port: int | None = None,
    graceful: bool = False,
    python_args: Sequence[str] = (),
    prefix: Sequence[str] = (),
) -> Iterator[Server]:
    """A real `interlock serve` process, killed (SIGKILL) on exit, or stopped with SIGTERM
    when `graceful`. A given `port` lets a test kill an orchestrator and bring it back at the
    same URL. `env` wins over the settings given here. `python_args` go to the interpreter
    before `-m interlock_cli` (the benchmarks' `-m cProfile -o FILE`); `prefix` goes before the
    interpreter (the benchmarks' `valgrind --tool=callgrind ...`)."""
    port = port or free_port()
    log = tmp_path / f"server-{port}-{time.monotonic_ns()}.log"
    environment = {
        **os.environ,
        "REDIS_URL": redis_url,
        "API_HOST": "127.0.0.1",
        "API_PORT": str(port),
        "BLUEPRINTS_DIR": str(blueprints),
        "CLIENT_TOKEN": CLIENT_TOKEN,
        "WORKER_TOKEN": WORKER_TOKEN,
        "REDIS_PARTITIONS": "4",
        **(env or {}),
    }
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [*prefix, sys.executable, *python_args, "-m", "interlock_cli", "serve"],
            cwd=ROOT,
            env=environment,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    server = Server(process, port, log)
    try:
        _wait_ready(server)
        yield server
    finally:
        if graceful:
            server.stop()
        else:
            server.kill()


class WorkerProcess:
    def __init__(self, process: subprocess.Popen[bytes], log: Path) -> None:
        self.process = process
        self.log = log

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for(self, text: str, timeout_s: float = 20) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if text in self.output():
                return
            time.sleep(0.05)
        raise AssertionError(f"worker never printed {text!r}:\n{self.output()}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)


@contextmanager
def worker(
    tmp_path: Path, url: str, worker_id: str, skills: str, *extra: str, token: str = WORKER_TOKEN
) -> Iterator[WorkerProcess]:
    log = tmp_path / f"worker-{worker_id}.log"
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.support.rxon_worker",
                "--url",
                url,
                "--id",
                worker_id,
                "--token",
                token,
                "--skills",
                skills,
                *extra,
            ],
            cwd=ROOT,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    handle = WorkerProcess(process, log)
    try:
        yield handle
    finally:
        handle.stop()


def folder_with(tmp_path: Path, **blueprints: str) -> Path:
    """A folder of blueprints for `serve`: one `<name>.yaml` for each keyword."""
    folder = tmp_path / "blueprints"
    folder.mkdir()
    for name, text in blueprints.items():
        (folder / f"{name}.yaml").write_text(text)
    return folder
