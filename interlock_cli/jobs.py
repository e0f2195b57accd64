"""The `interlock` commands for jobs, on interlock_client: submit, jobs, show, watch, cancel,
approve, explain, send-event, pause, resume, redrive, rerun.

Every command reads the server from INTERLOCK_URL (default http://127.0.0.1:8080) and the
token from INTERLOCK_CLIENT_TOKEN (or CLIENT_TOKEN, the name `interlock serve` reads), unless
--url and --token say otherwise. An error answer prints the server's message, never a
traceback. Exit status: see `Exit`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from enum import IntEnum
from itertools import islice
from pathlib import Path
from typing import Any

from interlock_client import (
    ApiError,
    Client,
    ClientError,
    Job,
    JobStatus,
    TransportError,
    WaitTimeout,
)


class Exit(IntEnum):
    """Exit statuses of the job commands; with `submit --wait` and `watch`, the job's end."""

    OK = 0  # done; the job finished
    REFUSED = 1  # the server refused (its message is printed), or --data is not usable
    UNREACHABLE = 2  # the server cannot be reached (argparse's usage errors are 2 as well)
    FAILED = 3  # the job failed
    CANCELLED = 4  # the job was cancelled
    TIMEOUT = 5  # --timeout passed before the job ended


ENDED: dict[str, Exit] = {
    JobStatus.FINISHED: Exit.OK,
    JobStatus.FAILED: Exit.FAILED,
    JobStatus.CANCELLED: Exit.CANCELLED,
}
Handler = Callable[[argparse.Namespace, Client], int]


class UsageError(Exception):
    """An argument that cannot be used (e.g. --data that is not a JSON object)."""


# The exit status of a failure: the first kind it is (an ApiError is a refusal).
FAILURES: tuple[tuple[type[Exception], Exit], ...] = (
    (WaitTimeout, Exit.TIMEOUT),
    (TransportError, Exit.UNREACHABLE),
    (UsageError, Exit.REFUSED),
    (ClientError, Exit.REFUSED),
)


def client_of(args: argparse.Namespace) -> Client:
    token = args.token or os.environ.get("INTERLOCK_CLIENT_TOKEN") or os.environ.get("CLIENT_TOKEN")
    return Client(args.url, token)


def run(handler: Handler, args: argparse.Namespace) -> int:
    """Run a job command with its client; errors become a message and an exit status."""
    name = f"interlock {args.command}"
    try:
        with client_of(args) as client:
            return handler(args, client)
    except (UsageError, ClientError) as exc:
        message = exc.message if isinstance(exc, ApiError) else str(exc)
        print(f"{name}: {message}", file=sys.stderr)
        return next(status for kind, status in FAILURES if isinstance(exc, kind))


def ended(job: Job) -> int:
    return ENDED.get(job["status"], Exit.OK)


def print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, ensure_ascii=False))


# -- the commands ------------------------------------------------------------------------------


def data_of(
    text: str | None, option: str = "--data", what: str = "the job's initial_data"
) -> dict[str, Any]:
    """--data (or `option`): a JSON object, `@file.json`, or `@-` for standard input."""
    if text is None:
        return {}
    source = option
    if text.startswith("@"):
        source = text[1:]
        try:
            text = sys.stdin.read() if source == "-" else Path(source).read_text("utf-8")
        except OSError as exc:
            raise UsageError(f"{option}: cannot read {source}: {exc.strerror}") from None
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise UsageError(f"{source} is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise UsageError(f"{source} must be a JSON object ({what})")
    return data


def labels_of(pairs: list[str] | None) -> dict[str, str] | None:
    """--label options, NAME=VALUE or NAME:VALUE (a label's name holds neither `=` nor `:`,
    so the first of them ends it: both commands take both forms), as a mapping."""
    if not pairs:
        return None
    labels: dict[str, str] = {}
    for pair in pairs:
        cut = min((i for i in (pair.find("="), pair.find(":")) if i >= 0), default=-1)
        name, value = (pair[:cut], pair[cut + 1 :]) if cut > 0 else ("", "")
        if not name:
            raise UsageError(f"--label {pair!r}: write NAME=VALUE (or NAME:VALUE)")
        if labels.get(name, value) != value:
            raise UsageError(f"--label {name}: given twice with different values")
        labels[name] = value
    return labels


def submit(args: argparse.Namespace, client: Client) -> int:
    data = data_of(args.data)
    labels = labels_of(args.label)
    options: dict[str, Any] = {}
    if labels is not None:
        options["labels"] = labels
    if args.idempotency_key is not None:
        options["idempotency_key"] = args.idempotency_key
    if args.job_id is not None:
        options["job_id"] = args.job_id
    submitted = client.submit(args.endpoint, data, **options)
    if not args.wait:
        print(submitted.job_id)
        return Exit.OK
    print(f"job {submitted.job_id} submitted; waiting for its end", file=sys.stderr)
    job = client.wait(submitted.job_id, timeout=args.timeout)
    print_json(job)
    return ended(job)


def jobs(args: argparse.Namespace, client: Client) -> int:
    found = list(
        islice(
            client.list(
                status=args.status,
                blueprint=args.blueprint,
                labels=labels_of(args.label),
                page_size=min(args.limit, 200),
            ),
            args.limit,
        )
    )
    if args.json:
        print_json(found)
        return Exit.OK
    rows = [("ID", "BLUEPRINT", "STATUS", "STATE", "CREATED")]
    rows += [
        (j["id"], j["blueprint"], j["status"], j["state"] or "-", j["created_at"]) for j in found
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        )
    return Exit.OK


def show(args: argparse.Namespace, client: Client) -> int:
    job = client.get(args.job_id, include_input=True)
    if args.json:
        print_json(job)
        return Exit.OK
    print(f"job        {job['id']}")
    print(f"blueprint  {job['blueprint']} (version {job['version']})")
    print(f"status     {job['status']}" + (f" at state {job['state']}" if job["state"] else ""))
    print(f"created    {job['created_at']}")
    print(f"updated    {job['updated_at']}")
    if job["finished_at"]:
        print(f"finished   {job['finished_at']}")
    for task in job.get("tasks", []):
        holder = f" on {task['worker']}" if "worker" in task else ""
        print(f"task       {task['type']} attempt {task['attempt']}: {task['status']}{holder}")
    if "progress" in job and job["status"] not in ENDED:
        print(f"progress   {progress_text(job)}")
    if "approval" in job:
        approval = job["approval"]
        print(f"approval   {approval['message'] or ''} ({', '.join(approval['decisions'])})")
    if "error" in job:
        print(f"error      {job['error']['code']}: {job['error']['message']}")
    if "initial_data" in job:
        print(f"input      {json.dumps(job['initial_data'], ensure_ascii=False)}")
    if "result" in job:
        print(f"result     {json.dumps(job['result'], ensure_ascii=False)}")
    return Exit.OK


def progress_text(job: Job) -> str:
    progress = job.get("progress")
    value = progress.get("progress") if progress is not None else None
    message = progress.get("message") if progress is not None else None
    percent = f"{value:.0%}" if isinstance(value, int | float) else "?"
    return f"{percent} {message}" if message else percent


def watch(args: argparse.Namespace, client: Client) -> int:
    from interlock_cli.watch import follow  # lazily: rich is needed only here

    return ended(follow(client, args.job_id, args.timeout, sys.stdout))


def cancel(args: argparse.Namespace, client: Client) -> int:
    job = client.cancel(args.job_id)
    print(f"{job['id']}: {job['status']}")
    return Exit.OK


def approve(args: argparse.Namespace, client: Client) -> int:
    job = client.approve(args.job_id, args.decision)
    print(f"{job['id']}: {args.decision} decided; {now(job)}")
    return Exit.OK


def now(job: Job) -> str:
    """`now STATUS at state STATE`: a job after a change."""
    state = f" at state {job['state']}" if job["state"] else ""
    return f"now {job['status']}{state}"


def send_event(args: argparse.Namespace, client: Client) -> int:
    payload = data_of(args.data, what="the event's payload")
    job = client.send_event(args.job_id, args.name, payload)
    print(f"{job['id']}: event {args.name} taken; {now(job)}")
    return Exit.OK


def pause(args: argparse.Namespace, client: Client) -> int:
    job = client.pause(args.job_id)
    print(f"{job['id']}: paused; {now(job)}")
    return Exit.OK


def resume(args: argparse.Namespace, client: Client) -> int:
    job = client.resume(args.job_id)
    print(f"{job['id']}: resumed; {now(job)}")
    return Exit.OK


def _patch(args: argparse.Namespace) -> dict[str, Any] | None:
    if args.patch is None:
        return None
    return data_of(args.patch, "--patch", "a JSON Merge Patch of the job's initial_data")


def redrive(args: argparse.Namespace, client: Client) -> int:
    job = client.redrive(args.job_id, _patch(args))
    print(f"{job['id']}: redriven; {now(job)}")
    return Exit.OK


def rerun(args: argparse.Namespace, client: Client) -> int:
    job = client.rerun(args.job_id, args.from_state, _patch(args))
    print(f"{job['id']}: rerun; {now(job)}")
    return Exit.OK


def explain(args: argparse.Namespace, client: Client) -> int:
    answer = client.explain(args.job_id)
    if args.json:
        print_json(answer)
    else:
        print(f"{answer['job_id']}: {answer['sentence']}")
    return Exit.OK


# -- the parser --------------------------------------------------------------------------------

EXITS = (
    "Exit status: 0 done (with --wait or watch: the job finished), 1 the server refused (its "
    "message is printed) or the input is not usable, 2 the server cannot be reached, "
    "3 the job failed, 4 it was cancelled, 5 --timeout passed first."
)


def positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number from 1 up")
    return value


def add_commands(commands: Any) -> None:
    """Add the job commands to the `interlock` parser's subcommands."""
    server = argparse.ArgumentParser(add_help=False)
    server.add_argument("--url", help="the server (INTERLOCK_URL, default http://127.0.0.1:8080)")
    server.add_argument("--token", help="the client token (INTERLOCK_CLIENT_TOKEN)")

    def command(name: str, handler: Handler, help_text: str) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = commands.add_parser(
            name, parents=[server], help=help_text, description=f"{help_text}. {EXITS}"
        )
        parser.set_defaults(handler=lambda args: run(handler, args))
        return parser

    new = command("submit", submit, "submit a job to a blueprint's api_endpoint")
    new.add_argument("endpoint", metavar="ENDPOINT", help="e.g. jobs/reminder")
    new.add_argument(
        "--data", metavar="JSON|@FILE", help="initial_data: a JSON object, @file.json or @- (stdin)"
    )
    new.add_argument(
        "--label",
        action="append",
        metavar="NAME=VALUE",
        help="a label, NAME=VALUE or NAME:VALUE (repeatable)",
    )
    new.add_argument(
        "--idempotency-key", metavar="KEY", help="retrying with it makes no second job"
    )
    new.add_argument(
        "--job-id",
        metavar="ID",
        help="name the job (the server appends your client's tag); retrying makes no second job",
    )
    new.add_argument("--wait", action="store_true", help="wait for the end; print the job as JSON")
    new.add_argument("--timeout", type=float, metavar="SECONDS", help="with --wait: give up after")

    listing = command("jobs", jobs, "list your jobs, newest first")
    listing.add_argument("--status", help="only jobs in this status (queued, finished, ...)")
    listing.add_argument("--blueprint", help="only jobs of this blueprint")
    listing.add_argument(
        "--label",
        action="append",
        metavar="NAME:VALUE",
        help="only jobs carrying this label, NAME:VALUE or NAME=VALUE (repeatable: all must match)",
    )
    listing.add_argument(
        "--limit", type=positive, default=20, help="at most this many (default 20)"
    )
    listing.add_argument("--json", action="store_true", help="print them as JSON")

    one = command("show", show, "show a job: status, state, tasks, progress, result or error")
    one.add_argument("job_id", metavar="JOB")
    one.add_argument("--json", action="store_true", help="print the job's JSON view")

    live = command("watch", watch, "follow a job live until it ends, with its tasks' progress")
    live.add_argument("job_id", metavar="JOB")
    live.add_argument("--timeout", type=float, metavar="SECONDS", help="give up after")

    stop = command("cancel", cancel, "cancel a job")
    stop.add_argument("job_id", metavar="JOB")

    decide = command("approve", approve, "decide the approval a job waits for")
    decide.add_argument("job_id", metavar="JOB")
    decide.add_argument(
        "decision", metavar="DECISION", help="one the approval offers: approve, ..."
    )

    event = command("send-event", send_event, "send an event to the listen state a job waits in")
    event.add_argument("job_id", metavar="JOB")
    event.add_argument("name", metavar="NAME", help="the event's name, e.g. payment_received")
    event.add_argument(
        "--data", metavar="JSON|@FILE", help="the payload: a JSON object, @file.json or @- (stdin)"
    )

    hold = command("pause", pause, "hold a job in its state until it is resumed")
    hold.add_argument("job_id", metavar="JOB")
    go_on = command("resume", resume, "let a paused job go on")
    go_on.add_argument("job_id", metavar="JOB")

    patch_help = "a JSON Merge Patch of the job's initial_data: a JSON object or @file.json"
    again = command("redrive", redrive, "run a failed or cancelled job again from where it failed")
    again.add_argument("job_id", metavar="JOB")
    again.add_argument("--patch", metavar="JSON|@FILE", help=patch_help)
    over = command("rerun", rerun, "run an ended job again from a state it names")
    over.add_argument("job_id", metavar="JOB")
    over.add_argument("--from", dest="from_state", required=True, metavar="STATE")
    over.add_argument("--patch", metavar="JSON|@FILE", help=patch_help)

    why = command("explain", explain, "ask the server why a job is where it is")
    why.add_argument("job_id", metavar="JOB")
    why.add_argument("--json", action="store_true", help="print the whole JSON answer")
