"""`interlock watch JOB`: the job's status, state and its task's progress, live until it ends.

On a terminal a rich live view redraws in place (a progress bar for a task that reports
progress with `ctx.progress(...)`); otherwise (a pipe, a CI log) one plain line is printed
per change, e.g. `2026-12-02T10:00:01.250Z running at fetch progress 50% downloading`.
The changes come from the `/changes` long poll (Client.follow), not from polling.
"""

from __future__ import annotations

import json
from typing import TextIO

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from interlock_cli.jobs import ENDED, progress_text
from interlock_client import Client, Job

STYLES = {"finished": "bold green", "failed": "bold red", "cancelled": "bold yellow"}


def follow(client: Client, job_id: str, timeout: float | None, out: TextIO) -> Job:
    """Show the job until it ends (WaitTimeout after `timeout` seconds); its final view."""
    if out.isatty():
        return _live(client, job_id, timeout, Console(file=out))
    said = None
    job: Job | None = None
    for job in client.follow(job_id, timeout=timeout):
        text = describe(job)
        if text != said:  # a change that shows nothing new (e.g. a lease's renewal) is skipped
            print(f"{job['updated_at']} {text}", file=out, flush=True)
            said = text
    assert job is not None  # follow yields at least the job's current view
    return job


def describe(job: Job) -> str:
    parts = [job["status"]]
    if job["state"]:
        parts.append(f"at {job['state']}")
    if "progress" in job and job["status"] not in ENDED:
        parts.append(f"progress {progress_text(job)}")
    if "approval" in job:
        parts.append(f"decisions: {', '.join(job['approval']['decisions'])}")
    if "error" in job:
        parts.append(f"error {job['error']['code']}: {job['error']['message']}")
    elif "result" in job:
        parts.append(f"result {json.dumps(job['result'], ensure_ascii=False)}")
    return " ".join(parts)


def _render(job: Job) -> RenderableType:
    status = Text(job["status"], style=STYLES.get(job["status"], "bold cyan"))
    head = Text.assemble((job["id"], "bold"), "  ", status)
    if job["state"]:
        head.append(f"  at {job['state']}")
    rows: list[RenderableType] = [head]
    progress = job.get("progress")
    value = progress.get("progress") if progress is not None else None
    if isinstance(value, int | float) and job["status"] not in ENDED:
        bar = Table.grid(padding=(0, 1))
        bar.add_row(ProgressBar(total=1.0, completed=value, width=40), progress_text(job))
        rows.append(bar)
    for task in job.get("tasks", []):
        holder = f" on {task['worker']}" if "worker" in task else ""
        rows.append(
            Text(f"  task {task['type']} attempt {task['attempt']}: {task['status']}{holder}")
        )
    if "approval" in job:
        rows.append(Text(f"  waiting for a decision: {', '.join(job['approval']['decisions'])}"))
    if "error" in job:
        rows.append(Text(f"  error {job['error']['code']}: {job['error']['message']}", style="red"))
    elif "result" in job:
        rows.append(Text(f"  result {json.dumps(job['result'], ensure_ascii=False)}"))
    return Group(*rows)


def _live(client: Client, job_id: str, timeout: float | None, console: Console) -> Job:
    job: Job | None = None
    with Live(Text(f"{job_id}  connecting"), console=console, auto_refresh=False) as live:
        for job in client.follow(job_id, timeout=timeout):
            live.update(_render(job), refresh=True)
    assert job is not None
    return job
