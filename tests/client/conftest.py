"""One real `interlock serve` (embedded store) with two worker processes, shared by the
client's and the job commands' tests: they read and make jobs of their own blueprints."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests.support.processes import CLIENT_TOKEN, serve, worker

BLUEPRINTS = {
    # A task the echo worker answers at once.
    "echo": """
blueprint: echo
api_endpoint: jobs/echo
input_schema: {type: object, required: [n], properties: {n: {type: integer}}}
start: work
states:
  work: {task: echo, params: {n: "${ initial_data.n }"}, on: {success: done}}
  done: {end: finished, output: {n: "${ steps.work.n }"}}
""",
    # A person decides; on approve a task reports 50% progress, then succeeds.
    "gated": """
blueprint: gated
api_endpoint: jobs/gated
start: review
states:
  review:
    approval: {message: "go?"}
    on: {approve: work, reject: rejected}
  work: {task: slow_echo, on: {success: done}}
  done: {end: finished, output: {approved: true}}
  rejected: {end: failed, error: {code: REJECTED, message: "rejected by a person"}}
""",
    # A task type no worker serves: the job stays queued until cancelled.
    "stuck": """
blueprint: stuck
api_endpoint: jobs/stuck
start: work
states:
  work: {task: nobody_serves_this, on: {success: done}}
  done: {end: finished}
""",
    # Listens for the event `go`, then echoes its `n`: events, pause, resume and rerun.
    "signal": """
blueprint: signal
api_endpoint: jobs/signal
start: listening
states:
  listening:
    listen:
      event: go
      schema: {type: object, required: [n], properties: {n: {type: integer}}}
    on: {received: work}
  work: {task: echo, params: {n: "${ steps.listening.n }"}, on: {success: done}}
  done: {end: finished, output: {n: "${ steps.work.n }"}}
""",
    # Only the listing tests submit these, so they know every job of it.
    "listed": """
blueprint: listed
api_endpoint: jobs/listed
start: work
states:
  work: {task: nobody_serves_this, on: {success: done}}
  done: {end: finished}
""",
}


@dataclass(frozen=True)
class Live:
    url: str
    token: str


@pytest.fixture(scope="package")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    tmp_path = tmp_path_factory.mktemp("live")
    folder = tmp_path / "blueprints"
    folder.mkdir()
    for name, text in BLUEPRINTS.items():
        (folder / f"{name}.yaml").write_text(text)
    with (
        serve(tmp_path, "memory://", folder) as server,
        worker(tmp_path, server.url, "w-echo", "echo", "--slots", "4") as fast,
        worker(tmp_path, server.url, "w-slow", "slow_echo", "--progress", "--delay", "1.5") as slow,
    ):
        fast.wait_for("registered")
        slow.wait_for("registered")
        yield Live(server.url, CLIENT_TOKEN)
