"""LOG_FORMAT=json on a real server at DEBUG: one object a line, with the job's fields, and
never a token or an approval link's secret."""

from __future__ import annotations

import json
import logging
import urllib.request
from pathlib import Path
from typing import Any

from server.logs import JsonFormatter, TextFormatter, log_context
from tests.support.processes import CLIENT_TOKEN, WORKER_TOKEN, serve


def call(url: str, method: str = "GET", body: Any = None, **headers: str) -> Any:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method, headers=headers)
    request.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(request, timeout=10) as response:
        raw = response.read()
    return json.loads(raw) if raw else None


def test_json_lines_carry_job_fields_and_no_secret(tmp_path: Path) -> None:
    client = {"X-Client-Token": CLIENT_TOKEN}
    worker = {"X-Worker-ID": "w-logs", "X-Worker-Token": WORKER_TOKEN}
    env = {"LOG_FORMAT": "json", "LOG_LEVEL": "DEBUG", "WEBHOOK_SECRET": "hook-secret"}
    with serve(tmp_path, "memory://", env=env, graceful=True) as server:
        # Given a job that asks a person, decided through its link
        base = server.url
        job_id = call(
            f"{base}/api/v1/jobs/expense_approval",
            "POST",
            {"initial_data": {"amount": 5, "employee": "ann"}},
            **client,
        )["job_id"]
        link = call(f"{base}/api/v1/jobs/{job_id}", **client)["approval"]["link"]
        token = link.rsplit("/", 1)[1]
        call(f"{base}/_public/approvals/{job_id}/{token}")
        call(link, "POST", {"decision": "approve"})
        # And a worker that runs its payment task
        call(f"{base}/_worker/workers/register", "POST", {"worker_id": "w-logs"}, **worker)
        task = call(
            f"{base}/_worker/workers/w-logs/tasks/next?timeout=10&available_skills=pay_expense",
            **worker,
        )
        result = {"job_id": job_id, "task_id": task["task_id"], "data": {}}
        assert call(f"{base}/_worker/tasks/result", "POST", result, **worker) == {
            "status": "accepted"
        }
        assert call(f"{base}/api/v1/jobs/{job_id}?wait=10", **client)["status"] == "finished"
        server.stop()
        output = server.output()

    # Then every log line is one JSON object
    lines = [line for line in output.splitlines() if line and "Interlock listening" not in line]
    records = [json.loads(line) for line in lines]
    assert all({"time", "level", "logger", "message"} <= set(r) for r in records)
    # with the job's fields where they apply
    jobs = [r for r in records if r.get("job_id") == job_id]
    assert {r.get("state") for r in jobs} >= {"review", "pay", "paid"}
    assert all(r["blueprint"] == "expense_approval" for r in jobs)
    worked = [r for r in jobs if r.get("worker_id") == "w-logs"]
    assert any(r.get("task_id") == task["task_id"] for r in worked)
    # And no token, no approval secret anywhere, at DEBUG
    for secret in (CLIENT_TOKEN, WORKER_TOKEN, token, "hook-secret"):
        assert secret not in output


def record(message: str, *args: Any, **extra: Any) -> logging.LogRecord:
    made = logging.LogRecord("interlock.test", logging.INFO, __file__, 1, message, args, None)
    made.__dict__.update(extra)
    return made


def test_formatters_cut_approval_links_and_take_fields_from_the_context() -> None:
    link = "http://x/_public/approvals/abc123/0123456789abcdef"
    with log_context(job_id="abc123", worker_id="w1", state=None):
        line = json.loads(JsonFormatter().format(record("sent %s", link, task_id="t-1")))
    assert line["message"] == "sent http://x/_public/approvals/abc123/***"
    assert (line["job_id"], line["worker_id"], line["task_id"]) == ("abc123", "w1", "t-1")
    assert "state" not in line
    text = TextFormatter("%(message)s").format(record("sent %s", link))
    assert text == "sent http://x/_public/approvals/abc123/***"
