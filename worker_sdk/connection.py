"""One orchestrator: its HTTP session, the five RXON calls (plus Interlock's batch poll and
batch results, docs/rxon-protocol.md §11), and whether it is usable.

Answers are translated where they enter the package (docs/rxon-protocol.md §1):

| answer                                  | raised / returned         |
|-----------------------------------------|---------------------------|
| connection refused, reset, timeout, 5xx, 408, a 2xx that is not JSON | `Unavailable` |
| 429 (with `Retry-After` if given)       | `RateLimited`             |
| any other 4xx                           | `Refused` (status, the server's message) |
| 204                                     | `None`                    |

A connection is *up* once a registration succeeded, and *down* again when a call finds the
orchestrator unreachable or when it forgets the worker; the worker's supervisor then probes
it by registering again, with backoff.

The extensions degrade to plain RXON on an orchestrator without them (an older Interlock,
another RXON server): a poll answered with a single task object counts as a batch of one,
and a batch of results answered 404 or 405 is sent again one result per request, as is
every later batch to that orchestrator until it registers anew.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any

import aiohttp

from worker_sdk.config import OrchestratorConfig
from worker_sdk.errors import WorkerError

log = logging.getLogger("worker_sdk.connection")

PREFIX = "/_worker"
PROTOCOL_VERSION = "1.0b17"  # the RXON version whose wire format this SDK speaks
JSON_HEADERS = {"Content-Type": "application/json"}


class Unavailable(WorkerError):
    """The orchestrator did not answer usefully: try later, or elsewhere."""


class RateLimited(WorkerError):
    def __init__(self, message: str, retry_after: float | None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class Refused(WorkerError):
    """A 4xx answer: the orchestrator understood and said no."""

    def __init__(self, status: int, message: str, details: Any = None) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status
        self.message = message
        self.details = details  # the server's `error.details`, when it gave any

    @property
    def max_bytes(self) -> int | None:
        """The body limit a 413 named (Interlock gives it as `details.max_bytes`)."""
        limit = self.details.get("max_bytes") if isinstance(self.details, dict) else None
        return limit if isinstance(limit, int) and limit > 0 else None

    @property
    def unauthorized(self) -> bool:
        return self.status in (401, 403)

    @property
    def worker_unknown(self) -> bool:
        """The orchestrator forgot this worker (restart, TTL): register again."""
        return self.status == 404 and "not found" in self.message.lower()


@dataclass(frozen=True, slots=True)
class ResultAnswer:
    accepted: bool
    reason: str = ""


class Backoff:
    """Exponential delays with jitter: initial, x2, ... up to `maximum`."""

    def __init__(self, initial: float, maximum: float) -> None:
        self.initial = initial
        self.maximum = max(initial, maximum)
        self.attempt = 0

    def next(self) -> float:
        base = min(self.maximum, self.initial * 2.0 ** min(self.attempt, 32))
        self.attempt += 1
        return base * random.uniform(0.8, 1.0)

    def reset(self) -> None:
        self.attempt = 0


class Connection:
    """Talks to one orchestrator on behalf of one worker id."""

    def __init__(self, config: OrchestratorConfig, worker_id: str, request_timeout: float) -> None:
        self.config = config
        self.worker_id = worker_id
        self.request_timeout = request_timeout
        self.up = False
        self.reason = "not registered yet"
        self.listeners: list[Callable[[], None]] = []  # called when `up` changes
        self.batch_results = True  # False once the orchestrator showed it has no batch route
        self._session: aiohttp.ClientSession | None = None

    def __repr__(self) -> str:
        return f"<Connection {self.url} {'up' if self.up else 'down'}>"

    @property
    def url(self) -> str:
        return self.config.url

    # -- lifecycle and health ----------------------------------------------------------------

    async def open(self) -> None:
        headers = {
            "X-Worker-ID": self.worker_id,
            "X-Worker-Token": self.config.token,
            "X-RXON-Version": PROTOCOL_VERSION,
        }
        self._session = aiohttp.ClientSession(headers=headers)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def mark_up(self) -> None:
        if not self.up:
            self.up = True
            self.reason = ""
            self.batch_results = True  # it may have been upgraded meanwhile: ask again
            self._notify()

    def mark_down(self, reason: str, *, quiet: bool = False) -> None:
        """Stop using this orchestrator until a registration succeeds again."""
        if self.up:
            if not quiet:
                log.warning(
                    "orchestrator %s: %s; probing it until it answers again", self.url, reason
                )
            self.up = False
            self._notify()
        self.reason = reason

    def _notify(self) -> None:
        for listener in list(self.listeners):
            listener()

    # -- the RXON calls ----------------------------------------------------------------------

    async def register(self, body: Mapping[str, Any]) -> None:
        answer = await self._call("POST", "/workers/register", body)
        if isinstance(answer, dict) and answer.get("warning"):
            log.warning("orchestrator %s: %s", self.url, answer["warning"])

    async def heartbeat(self, body: Mapping[str, Any]) -> list[str]:
        """Send a heartbeat; returns the task ids the orchestrator wants cancelled."""
        answer = await self._call("PATCH", f"/workers/{self.worker_id}", body)
        cancels = answer.get("cancel_task_ids") if isinstance(answer, dict) else None
        if not isinstance(cancels, list):
            return []
        return [str(task_id) for task_id in cancels]

    async def poll(
        self, skills: list[str], wait_s: float, max_tasks: int = 1
    ) -> list[dict[str, Any]]:
        """One long poll for up to `max_tasks` tasks: [] when none came within `wait_s`."""
        query = {
            "timeout": f"{wait_s:g}",
            "available_skills": ",".join(skills),
            "max_tasks": str(max_tasks),
        }
        answer = await self._call(
            "GET",
            f"/workers/{self.worker_id}/tasks/next",
            params=query,
            total_s=wait_s + self.request_timeout,
        )
        if not answer:  # 204, or 200 with {} or null
            return []
        if not isinstance(answer, dict):
            raise Unavailable(f"the task is not a JSON object: {str(answer)[:200]}")
        tasks = answer.get("tasks", [answer])  # a single task: a server without batch polls
        if not isinstance(tasks, list):
            raise Unavailable(f"'tasks' is not a JSON array: {str(tasks)[:200]}")
        for task in tasks:
            if not isinstance(task, dict):
                log.error(
                    "orchestrator %s sent a task that is not an object: %.300s", self.url, task
                )
        return [task for task in tasks if isinstance(task, dict)]

    async def send_results(self, encoded: Sequence[bytes]) -> list[ResultAnswer | WorkerError]:
        """Send results (each a JSON-encoded result body) in one request; one outcome per
        result, in order. A failure of the whole request is raised (it concerns them all);
        where the results went one per request, each has its own outcome."""
        if self.batch_results:
            raw = b'{"results":[' + b",".join(encoded) + b"]}"
            try:
                answer = await self._call("POST", "/tasks/results", raw=raw)
            except Refused as exc:
                if exc.status in (404, 405):  # no such route: a server without batches
                    log.info(
                        "orchestrator %s takes no batches of results (%s); sending them one by one",
                        self.url,
                        exc,
                    )
                    self.batch_results = False
                elif exc.status != 413 or len(encoded) == 1:
                    raise
                # 413: together they are too large for the server; one by one they may pass
            else:
                return _result_answers(answer, len(encoded))
        return await self._one_by_one(encoded)

    async def _one_by_one(self, encoded: Sequence[bytes]) -> list[ResultAnswer | WorkerError]:
        async def one(raw: bytes) -> ResultAnswer | WorkerError:
            try:
                return _result_answer(await self._call("POST", "/tasks/result", raw=raw))
            except WorkerError as exc:
                return exc

        return list(await asyncio.gather(*(one(raw) for raw in encoded)))

    async def send_event(self, body: Mapping[str, Any]) -> None:
        await self._call("POST", "/events", body)

    # -- transport ---------------------------------------------------------------------------

    async def _call(
        self,
        method: str,
        path: str,
        body: Mapping[str, Any] | None = None,
        *,
        raw: bytes | None = None,
        params: Mapping[str, str] | None = None,
        total_s: float | None = None,
    ) -> Any:
        """`body` is sent as JSON; `raw` is a body already encoded as JSON."""
        if self._session is None:
            raise Unavailable("the connection is closed")
        limit = aiohttp.ClientTimeout(total=total_s or self.request_timeout)
        if body is not None:  # UTF-8 (aiohttp's json= would escape non-ASCII text as \uXXXX)
            raw = json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()
        try:
            async with self._session.request(
                method,
                self.url + PREFIX + path,
                # a stream: aiohttp warns that large bytes sent at once may block the loop
                data=io.BytesIO(raw) if raw is not None else None,
                headers=JSON_HEADERS if raw is not None else None,
                params=params,
                timeout=limit,
            ) as response:
                text = await response.text(errors="replace")
                status = response.status
                retry_after = response.headers.get("Retry-After")
        except TimeoutError:
            raise Unavailable(f"no answer to {method} {path} within {limit.total:g}s") from None
        except (aiohttp.ClientError, OSError) as exc:
            raise Unavailable(f"{type(exc).__name__}: {exc}") from None
        return _answer(method, path, status, text, retry_after)


def _result_answer(answer: Any) -> ResultAnswer:
    if isinstance(answer, dict) and answer.get("status") == "ignored":
        return ResultAnswer(False, str(answer.get("reason") or "ignored"))
    return ResultAnswer(True)


def _result_answers(answer: Any, count: int) -> list[ResultAnswer | WorkerError]:
    """The answers of a batch, in order; a malformed answer counts as no answer at all."""
    answers = answer.get("results") if isinstance(answer, dict) else None
    if not isinstance(answers, list) or len(answers) != count:
        raise Unavailable(
            f'the answer to {count} results is not {{"results": [{count} answers]}}: '
            f"{str(answer)[:200]}"
        )
    return [_result_answer(item) for item in answers]


def _answer(method: str, path: str, status: int, text: str, retry_after: str | None) -> Any:
    if status == 204:
        return None
    if 200 <= status < 300:
        if not text.strip():
            return None
        try:
            return json.loads(text)
        except ValueError:
            raise Unavailable(f"{method} {path} answered {status} with non-JSON text") from None
    message, details = _error(text)
    if status == 429:
        raise RateLimited(f"HTTP 429: {message}", _retry_after(retry_after))
    if status >= 500 or status == 408:
        raise Unavailable(f"HTTP {status}: {message}")
    raise Refused(status, message, details)


def _error(text: str) -> tuple[str, Any]:
    """The server's message from `{"error": {"message": ...}}`, `{"error": "..."}` or text,
    and the error's `details` (None when it has none)."""
    try:
        body = json.loads(text)
    except ValueError:
        return text.strip()[:500], None
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict) and error.get("message"):
        return str(error["message"])[:500], error.get("details")
    if isinstance(error, str):
        return error[:500], None
    return text.strip()[:500], None


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None
