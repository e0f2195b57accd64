"""The `interlock` job commands as real processes against a real server: output, exit
statuses, and errors as one line from the server's message (never a traceback)."""

from __future__ import annotations

import json
import os
import pty
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import IO

import pytest

from interlock_client import Client
from tests.client.conftest import Live
from tests.support.processes import ROOT
from tests.support.redis_server import free_port

pytestmark = pytest.mark.timeout(90)

COMMAND = [sys.executable, "-m", "interlock_cli"]


def environment(live: Live) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("CLIENT_TOKEN", "INTERLOCK_URL")}
    return {**env, "INTERLOCK_URL": live.url, "INTERLOCK_CLIENT_TOKEN": live.token}


def cli(live: Live, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*COMMAND, *args],
        input=stdin,
        capture_output=True,
        text=True,
        env=environment(live),
        cwd=ROOT,
        timeout=60,
    )


@contextmanager
def started(live: Live, *args: str) -> Iterator[subprocess.Popen[str]]:
    process = subprocess.Popen(
        [*COMMAND, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=environment(live),
        cwd=ROOT,
    )
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=10)
        for stream in (process.stdout, process.stderr):
            if stream is not None:
                stream.close()


def line_with(stream: IO[str] | None, text: str) -> str:
    """Read lines (blocking, under the test's timeout) until one contains `text`."""
    assert stream is not None
    for line in stream:
        if text in line:
            return line
    raise AssertionError(f"the output ended without {text!r}")


def until_status(client: Client, job_id: str, status: str) -> None:
    for view in client.follow(job_id, timeout=20):
        if view["status"] == status:
            return
    raise AssertionError(f"job {job_id} ended without being {status}")


@pytest.fixture
def client(live: Live) -> Iterator[Client]:
    with Client(live.url, live.token) as made:
        yield made


def test_submit_with_wait_prints_the_finished_job_and_exits_0(live: Live, tmp_path: Path) -> None:
    data = tmp_path / "data.json"
    data.write_text('{"n": 5}')

    done = cli(live, "submit", "jobs/echo", "--data", f"@{data}", "--wait", "--timeout", "30")

    assert done.returncode == 0, done.stderr
    job = json.loads(done.stdout)
    assert (job["status"], job["result"]) == ("finished", {"n": 5})
    from_stdin = cli(live, "submit", "jobs/echo", "--data", "@-", "--wait", stdin='{"n": 6}')
    assert json.loads(from_stdin.stdout)["result"] == {"n": 6}


def test_submit_prints_the_job_id_and_an_idempotency_key_keeps_it(live: Live) -> None:
    key = f"cli-{free_port()}"
    first = cli(live, "submit", "jobs/stuck", "--idempotency-key", key)
    again = cli(live, "submit", "jobs/stuck", "--idempotency-key", key)
    assert first.returncode == again.returncode == 0, first.stderr
    assert first.stdout == again.stdout
    assert len(first.stdout.strip()) == 32


def test_the_exit_status_says_how_the_job_ended(live: Live, client: Client) -> None:
    with started(live, "submit", "jobs/gated", "--wait") as rejected:
        job_id = line_with(rejected.stderr, "submitted").split()[1]
        until_status(client, job_id, "waiting_for_human")
        decided = cli(live, "approve", job_id, "reject")
        assert decided.returncode == 0, decided.stderr
        assert decided.stdout == f"{job_id}: reject decided; now failed at state rejected\n"
        assert rejected.wait(timeout=30) == 3
        assert rejected.stdout is not None
        assert json.loads(rejected.stdout.read())["error"]["code"] == "REJECTED"

    with started(live, "submit", "jobs/stuck", "--wait") as cancelled:
        job_id = line_with(cancelled.stderr, "submitted").split()[1]
        stopped = cli(live, "cancel", job_id)
        assert stopped.stdout == f"{job_id}: cancelled\n"
        assert cancelled.wait(timeout=30) == 4

    late = cli(live, "submit", "jobs/stuck", "--wait", "--timeout", "0.5")
    assert late.returncode == 5
    assert late.stderr.splitlines()[-1].endswith("is still queued after 0.5 s")


def test_jobs_lists_and_show_shows(live: Live, client: Client) -> None:
    mine = [client.submit("jobs/listed", {"k": i}).job_id for i in range(3)]

    table = cli(live, "jobs", "--blueprint", "listed", "--status", "queued", "--limit", "2")
    as_json = cli(live, "jobs", "--blueprint", "listed", "--json", "--limit", "100")
    shown = cli(live, "show", mine[0])

    assert table.returncode == 0, table.stderr
    header, *rows = table.stdout.splitlines()
    assert header.split() == ["ID", "BLUEPRINT", "STATUS", "STATE", "CREATED"]
    assert [row.split()[1:4] for row in rows] == [["listed", "queued", "work"]] * 2
    assert [row.split()[0] for row in rows] == [
        j["id"] for j in client.page(blueprint="listed", limit=2)["jobs"]
    ]
    assert set(mine) <= {job["id"] for job in json.loads(as_json.stdout)}
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert lines[:3] == [
        f"job        {mine[0]}",
        "blueprint  listed (version 1)",
        "status     queued at state work",
    ]
    assert "task       nobody_serves_this attempt 1: queued" in lines
    assert 'input      {"k": 0}' in lines
    assert json.loads(cli(live, "show", mine[0], "--json").stdout)["initial_data"] == {"k": 0}


def test_watch_prints_a_line_per_change_with_progress(live: Live, client: Client) -> None:
    job_id = client.submit("jobs/gated").job_id
    with started(live, "watch", job_id) as watching:
        first = line_with(watching.stdout, "waiting_for_human")
        client.approve(job_id, "approve")
        assert watching.wait(timeout=30) == 0
        assert watching.stdout is not None
        rest = watching.stdout.read().splitlines()
    assert first.split()[1:] == [
        "waiting_for_human",
        "at",
        "review",
        "decisions:",
        "approve,",
        "reject",
    ]
    described = [" ".join(line.split()[1:]) for line in rest]
    assert "running at work progress 50% halfway" in described
    assert described[-1] == 'finished at done result {"approved": true}'


def test_watch_on_a_terminal_draws_a_progress_bar(live: Live, client: Client) -> None:
    job_id = client.submit("jobs/gated").job_id
    controller, terminal = pty.openpty()
    watching = subprocess.Popen(
        [*COMMAND, "watch", job_id],
        stdin=terminal,
        stdout=terminal,
        stderr=terminal,
        env={**environment(live), "TERM": "xterm-256color", "COLUMNS": "100"},
        cwd=ROOT,
    )
    os.close(terminal)
    screen = b""
    try:
        until_status(client, job_id, "waiting_for_human")
        while b"waiting for a decision" not in screen:
            screen += os.read(controller, 65536)
        client.approve(job_id, "approve")
        while True:
            try:
                chunk = os.read(controller, 65536)
            except OSError:  # the watcher exited and closed the terminal
                break
            if not chunk:
                break
            screen += chunk
        assert watching.wait(timeout=30) == 0
    finally:
        if watching.poll() is None:
            watching.kill()
        watching.wait(timeout=10)
        os.close(controller)
    text = screen.decode("utf-8", "replace")
    assert "\x1b[" in text  # drawn with terminal control sequences, redrawn in place
    assert "━" in text  # rich's progress bar
    assert "50% halfway" in text
    assert "finished" in text


def test_an_event_pause_resume_and_rerun_from_the_command_line(
    live: Live, client: Client, tmp_path: Path
) -> None:
    chosen = f"cli-signal-{free_port()}"
    submitted = cli(live, "submit", "jobs/signal", "--job-id", chosen)
    assert submitted.returncode == 0, submitted.stderr
    job_id = submitted.stdout.strip()
    assert job_id.startswith(f"{chosen}-")
    assert cli(live, "submit", "jobs/signal", "--job-id", chosen).stdout.strip() == job_id
    until_status(client, job_id, "waiting")

    refused = cli(live, "send-event", job_id, "go", "--data", '{"n": "x"}')
    assert refused.returncode == 1
    assert "interlock send-event: the payload does not match the schema" in refused.stderr
    paused = cli(live, "pause", job_id)
    assert paused.stdout == f"{job_id}: paused; now paused at state listening\n"
    payload = tmp_path / "event.json"
    payload.write_text('{"n": 8}')
    sent = cli(live, "send-event", job_id, "go", "--data", f"@{payload}")
    assert sent.stdout == f"{job_id}: event go taken; now paused at state listening\n"
    resumed = cli(live, "resume", job_id)
    assert resumed.returncode == 0, resumed.stderr
    assert resumed.stdout.startswith(f"{job_id}: resumed; now ")
    assert client.wait(job_id, timeout=30)["result"] == {"n": 8}

    rerun = cli(live, "rerun", job_id, "--from", "work", "--patch", '{"unused": 1}')
    assert rerun.returncode == 0, rerun.stderr
    assert rerun.stdout.startswith(f"{job_id}: rerun; now ")
    assert client.wait(job_id, timeout=30)["status"] == "finished"
    assert client.get(job_id, include_input=True)["initial_data"] == {"unused": 1}
    not_again = cli(live, "redrive", job_id)
    assert (not_again.returncode, not_again.stdout) == (1, "")
    assert "interlock redrive: the job cannot be redriven: the job has ended" in not_again.stderr


def test_a_cancelled_job_is_redriven_with_a_patch(live: Live, client: Client) -> None:
    job_id = client.submit("jobs/stuck", {"tries": 1}).job_id
    client.cancel(job_id)

    redriven = cli(live, "redrive", job_id, "--patch", '{"tries": 2}')

    assert redriven.stdout == f"{job_id}: redriven; now queued at state work\n", redriven.stderr
    assert client.get(job_id, include_input=True)["initial_data"] == {"tries": 2}
    client.cancel(job_id)


def test_jobs_filters_by_label(live: Live, client: Client) -> None:
    run = f"cli-{free_port()}"
    made = cli(live, "submit", "jobs/listed", "--label", f"run:{run}", "--label", "kind=a")
    a = made.stdout.strip()  # (a label as NAME:VALUE or NAME=VALUE, in both commands)
    b = client.submit("jobs/listed", labels={"run": run, "kind": "b"}).job_id

    both = cli(live, "jobs", "--label", f"run:{run}", "--json")
    only_a = cli(live, "jobs", "--label", f"run={run}", "--label", "kind:a", "--json")  # either

    assert [job["id"] for job in json.loads(both.stdout)] == [b, a]
    assert [job["id"] for job in json.loads(only_a.stdout)] == [a]


def test_errors_print_the_message_and_exit_non_zero(live: Live) -> None:
    cases = [
        (
            ("show", "no-such-job"),
            1,
            "interlock show: no job with this id is visible to this client",
        ),
        (("approve", "no-such-job", "approve"), 1, "interlock approve: no job with this id"),
        (("submit", "jobs/echo", "--data", '{"n": "x"}'), 1, "does not match the input_schema"),
        (("submit", "jobs/echo", "--data", "{oops"), 1, "interlock submit: --data is not JSON"),
        (("submit", "jobs/echo", "--data", "[1]"), 1, "must be a JSON object"),
        (("submit", "jobs/echo", "--data", "@/no/such/file"), 1, "cannot read /no/such/file"),
        (("jobs", "--status", "bogus"), 1, "is not a job status"),
        (("jobs", "--label", "run"), 1, "interlock jobs: --label 'run': write NAME=VALUE"),
        (("submit", "jobs/echo", "--label", ":1"), 1, "--label ':1': write NAME=VALUE"),
        (("pause", "no-such-job"), 1, "interlock pause: no job with this id"),
        (("send-event", "no-such-job", "go", "--data", "[]"), 1, "must be a JSON object"),
        (("redrive", "x", "--patch", "{oops"), 1, "interlock redrive: --patch is not JSON"),
        (("rerun", "x"), 2, "the following arguments are required: --from"),
        (("jobs", "--limit", "-3"), 2, "'-3' is not a whole number from 1 up"),
        (("show", "x", "--token", "wrong"), 1, "X-Client-Token is not valid"),
        (("show", "x", "--url", f"http://127.0.0.1:{free_port()}"), 2, "cannot reach http://"),
    ]
    with ThreadPoolExecutor(len(cases)) as pool:  # independent processes: run them at once
        results = list(pool.map(lambda case: cli(live, *case[0]), cases))
    for (args, status, message), done in zip(cases, results, strict=True):
        assert (done.returncode, done.stdout) == (status, ""), (args, done.stderr)
        assert message in done.stderr, (args, done.stderr)
        assert "Traceback" not in done.stderr
