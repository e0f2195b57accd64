"""Logging for `interlock serve`: text for people (the default) or `LOG_FORMAT=json`.

In JSON, each record is one object on one line: `time`, `level`, `logger`, `message`, and
`job_id`, `task_id`, `worker_id`, `blueprint`, `state` where they apply. Those come from
the record's `extra`, or else from the context of the code that logs (`log_context`, a
contextvar: an HTTP request binds the worker and the job it names, a job change binds the
job's fields), so a log call deep in the engine needs no parameters for them.

Secrets never reach a log line: approval links are cut to `/_public/approvals/<job>/***`
in every message whatever its format, and tokens are never passed to a logger.
"""

from __future__ import annotations

import contextlib
import logging
import re
import sys
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from engine.jsonutil import dumps
from engine.runtime.jobdoc import Effects
from server.errors import Handler

FIELDS = ("job_id", "task_id", "worker_id", "blueprint", "state")
_context: ContextVar[dict[str, str]] = ContextVar("interlock_log_context", default={})  # noqa: B039 - never mutated
_APPROVAL_LINK = re.compile(r"(/_public/approvals/[A-Za-z0-9_-]+/)[A-Za-z0-9_-]+")
_ID = re.compile(r"^[A-Za-z0-9_-]{1,128}$")


def redact(text: str) -> str:
    """`text` with the token of any approval link replaced by ***."""
    return _APPROVAL_LINK.sub(r"\1***", text)


@contextlib.contextmanager
def log_context(**fields: Any) -> Iterator[None]:
    """Add `fields` (those of FIELDS that are set) to every record logged inside."""
    given = {k: str(v) for k, v in fields.items() if k in FIELDS and v is not None and v != ""}
    token = _context.set({**_context.get(), **given})
    try:
        yield
    finally:
        _context.reset(token)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        moment = datetime.fromtimestamp(record.created, UTC)
        line: dict[str, Any] = {
            "time": moment.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": redact(record.getMessage()),
        }
        context = _context.get()
        for name in FIELDS:
            value = getattr(record, name, None) or context.get(name)
            if value:
                line[name] = redact(str(value))
        if record.exc_info:
            line["exception"] = redact(self.formatException(record.exc_info))
        return dumps(line)


def notice_printer(log_format: str) -> Callable[[str], None]:
    """Print a start-up notice on stderr: as is, or as a JSON log line."""

    def notice(text: str) -> None:
        if log_format == "json":
            made = logging.LogRecord("interlock.serve", logging.WARNING, "", 0, text, None, None)
            text = JsonFormatter().format(made)
        print(text, file=sys.stderr, flush=True)

    return notice


def setup(log_format: str, level: str) -> None:
    """Configure the root handler once: WARNING for libraries, `level` for interlock.*."""
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(TextFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(logging.WARNING)
    known = logging.getLevelNamesMapping()
    logging.getLogger("interlock").setLevel(level if level in known else "INFO")


def context_middleware() -> Callable[..., Any]:
    """Bind the worker (X-Worker-ID) and the job (a `{job_id}` in the path) of a request."""

    @web.middleware
    async def bind(request: web.Request, handler: Handler) -> web.StreamResponse:
        worker = request.headers.get("X-Worker-ID", "")
        job = request.match_info.get("job_id", "")
        with log_context(
            worker_id=worker if _ID.match(worker) else None,
            job_id=job if _ID.match(job) else None,
        ):
            return await handler(request)

    return bind


log = logging.getLogger("interlock.jobs")


class LoggingObserver:
    """Logs each applied job change at DEBUG (engine/runtime/observe.py hooks)."""

    def before_commit(self, machine: Any, doc: dict[str, Any], fx: Effects) -> Any:
        return None

    def committed(self, machine: Any, doc: dict[str, Any], fx: Effects, note: Any) -> None:
        if not log.isEnabledFor(logging.DEBUG):
            return
        events = [str(e.get("event")) for e in fx.history]
        task_id = next((e["task_id"] for e in fx.history if e.get("task_id")), None)
        log.debug(
            "job %s is %s at state %s (%s)",
            doc["id"],
            doc["status"],
            doc.get("state"),
            ", ".join(events) or "no event",
            extra={
                "job_id": doc["id"],
                "blueprint": doc["blueprint"],
                "state": doc.get("state"),
                "task_id": task_id,
            },
        )
