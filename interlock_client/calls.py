"""The API's requests and the client's loops, without I/O (sans-IO).

Each request is a `Call`: method, path, query, JSON body, headers and how to read the answer.
The loops (`wait`, `follow`, `iterate`) are generators that yield steps (a `Call` to make, a
`Sleep`, an `Emit` of a value to the caller) and receive each call's answer, so the sync
client (urllib3) and the async one (aiohttp) run the very same logic; each only performs the
steps. A new endpoint is one function here and a one-line method in each client.
"""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Callable, Generator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar, Unpack, cast
from urllib.parse import quote

from interlock_client.errors import (
    ServiceUnavailable,
    TransportError,
    UnexpectedResponse,
    WaitTimeout,
    api_error,
)
from interlock_client.models import (
    TERMINAL,
    Change,
    Event,
    Explanation,
    Job,
    Page,
    SubmitOptions,
    Submitted,
)

T = TypeVar("T")
Query = Mapping[str, str] | Sequence[tuple[str, str]]  # pairs: a name may repeat
PREFIX = "/api/v1"
MAX_WAIT_S = 60.0  # the longest long poll the server holds (`?wait=`)
LONG_POLL_MARGIN_S = 15.0  # read timeout of a long poll: its wait plus this
RECONNECT_S = (0.2, 0.5, 1.0, 2.0, 5.0)  # pauses between reconnects, the last one repeated


@dataclass(frozen=True)
class Response:
    status: int
    body: bytes


@dataclass(frozen=True)
class Call(Generic[T]):
    """One request and the reading of its answer (which raises the API's errors)."""

    method: str
    path: str
    read: Callable[[Response], T]
    query: Query = field(default_factory=dict)
    body: Any = None  # JSON; None sends no body
    headers: Mapping[str, str] = field(default_factory=dict)
    wait_s: float = 0.0  # a long poll: the read timeout grows by this

    def encoded_body(self) -> bytes | None:
        return None if self.body is None else json.dumps(self.body).encode("utf-8")


@dataclass(frozen=True)
class Sleep:
    seconds: float


@dataclass(frozen=True)
class Emit(Generic[T]):
    value: T


Step = Call[Any] | Sleep | Emit[Any]
Plan = Generator[Step, Any, T]


# -- reading answers ---------------------------------------------------------------------------


def _checked(response: Response) -> Response:
    if response.status >= 400:
        raise api_error(response.status, response.body)
    return response


def read_json(response: Response) -> Any:
    try:
        return json.loads(_checked(response).body)
    except ValueError:
        raise UnexpectedResponse(response.status, "the body is not JSON") from None


def read_text(response: Response) -> str:
    return _checked(response).body.decode("utf-8", "replace")


def _reader(cls: type[T]) -> Callable[[Response], T]:  # a typed read_json
    return cast(Callable[[Response], T], read_json)


def read_submitted(response: Response) -> Submitted:
    answer = read_json(response)
    return Submitted(job_id=answer["job_id"], created=response.status == 202)


# -- the requests ------------------------------------------------------------------------------


def job_path(job_id: str, tail: str = "") -> str:
    return f"{PREFIX}/jobs/{quote(job_id, safe='')}{tail}"


def submit(
    endpoint: str, data: Mapping[str, Any] | None = None, **options: Unpack[SubmitOptions]
) -> Call[Submitted]:
    # Optional fields are sent only when set: a server that does not know one refuses it.
    body: dict[str, Any] = {"initial_data": dict(data or {})}
    fields = {k: v for k, v in options.items() if k != "idempotency_key" and v is not None}
    body.update({k: dict(v) if isinstance(v, Mapping) else v for k, v in fields.items()})
    key = options.get("idempotency_key")
    headers = {} if key is None else {"Idempotency-Key": key}
    path = f"{PREFIX}/{quote(endpoint.strip('/'), safe='/')}"
    return Call("POST", path, read_submitted, body=body, headers=headers)


def get(job_id: str, *, wait_s: float = 0.0, include_input: bool = False) -> Call[Job]:
    query = {"wait": _seconds(wait_s)} if wait_s > 0 else {}
    if include_input:
        query["include"] = "initial_data"
    return Call("GET", job_path(job_id), _reader(Job), query=query, wait_s=wait_s)


def changes(job_id: str, *, since: str | None = None, wait_s: float = 0.0) -> Call[Change]:
    query = {"wait": _seconds(wait_s)} if wait_s > 0 else {}
    if since is not None:
        query["since"] = since
    return Call("GET", job_path(job_id, "/changes"), _reader(Change), query=query, wait_s=wait_s)


def history(job_id: str) -> Call[list[Event]]:
    def read(response: Response) -> list[Event]:
        events: list[Event] = read_json(response)["events"]
        return events

    return Call("GET", job_path(job_id, "/history"), read)


def graph(job_id: str) -> Call[str]:
    return Call("GET", job_path(job_id, "/graph"), read_text)


def cancel(job_id: str) -> Call[Job]:
    return Call("POST", job_path(job_id, "/cancel"), _reader(Job))


def approve(job_id: str, decision: str) -> Call[Job]:
    body = {"decision": decision}
    return Call("POST", job_path(job_id, "/approval"), _reader(Job), body=body)


def send_event(job_id: str, name: str, payload: Mapping[str, Any] | None = None) -> Call[Job]:
    path = job_path(job_id, f"/events/{quote(name, safe='')}")
    return Call("POST", path, _reader(Job), body=dict(payload or {}))


def pause(job_id: str) -> Call[Job]:
    return Call("POST", job_path(job_id, "/pause"), _reader(Job))


def resume(job_id: str) -> Call[Job]:
    return Call("POST", job_path(job_id, "/resume"), _reader(Job))


def redrive(job_id: str, initial_data_patch: Mapping[str, Any] | None = None) -> Call[Job]:
    body = {} if initial_data_patch is None else {"initial_data_patch": dict(initial_data_patch)}
    return Call("POST", job_path(job_id, "/redrive"), _reader(Job), body=body)


def rerun(
    job_id: str, from_state: str, initial_data_patch: Mapping[str, Any] | None = None
) -> Call[Job]:
    body: dict[str, Any] = {"from_state": from_state}
    if initial_data_patch is not None:
        body["initial_data_patch"] = dict(initial_data_patch)
    return Call("POST", job_path(job_id, "/rerun"), _reader(Job), body=body)


def explain(job_id: str) -> Call[Explanation]:
    return Call("GET", job_path(job_id, "/explain"), _reader(Explanation))


def page(
    *,
    status: str | None = None,
    blueprint: str | None = None,
    labels: Mapping[str, str] | None = None,
    limit: int | None = None,
    cursor: str | None = None,
) -> Call[Page]:
    """`labels`: jobs carrying every one of these labels (a `label=name:value` each)."""
    given = {"status": status, "blueprint": blueprint, "limit": limit, "cursor": cursor}
    query = [(k, str(v)) for k, v in given.items() if v is not None]
    query += [("label", f"{name}:{value}") for name, value in (labels or {}).items()]
    return Call("GET", f"{PREFIX}/jobs", _reader(Page), query=query)


def _seconds(value: float) -> str:
    return f"{min(value, MAX_WAIT_S):.3f}".rstrip("0").rstrip(".")


# -- the loops ---------------------------------------------------------------------------------


class _Deadline:
    def __init__(self, timeout_s: float | None) -> None:
        self.timeout_s = timeout_s
        self.at = None if timeout_s is None else time.monotonic() + timeout_s

    def left(self) -> float:
        """Seconds left (MAX_WAIT_S when there is no deadline)."""
        if self.at is None:
            return MAX_WAIT_S
        return max(0.0, self.at - time.monotonic())


def _patiently(call: Call[T], deadline: _Deadline) -> Plan[T]:
    """Make `call`; if the server cannot be reached or is unavailable, try again after a
    pause until the deadline. Only for reads, which are safe to repeat."""
    for attempt in itertools.count():
        try:
            answer: T = yield call
            return answer
        except (TransportError, ServiceUnavailable):
            pause = RECONNECT_S[min(attempt, len(RECONNECT_S) - 1)]
            if deadline.left() <= pause:
                raise
            yield Sleep(pause)
    raise AssertionError("itertools.count() ended")  # pragma: no cover


def wait(job_id: str, timeout_s: float | None = None) -> Plan[Job]:
    """The job once it has ended: long polls of up to 60 s each (the server answers as soon
    as the job ends), one after another, reconnecting after a broken connection or a 503,
    until `timeout_s` (None: no deadline); then WaitTimeout with the job's last view."""
    deadline = _Deadline(timeout_s)
    while True:
        job = yield from _patiently(get(job_id, wait_s=deadline.left()), deadline)
        if job["status"] in TERMINAL:
            return job
        if deadline.left() <= 0:
            raise WaitTimeout(job, timeout_s or 0.0)


def follow(job_id: str, timeout_s: float | None = None) -> Plan[Job]:
    """Emit the job's view now and each time it changes, until it has ended (its final view
    is the last one emitted; it is also returned). The `/changes` long poll says when."""
    deadline = _Deadline(timeout_s)
    change = (yield from _patiently(changes(job_id), deadline))["change"]
    last: Job | None = None
    while True:
        job = yield from _patiently(get(job_id), deadline)
        if job != last:  # a change may have come between `changes` and `get`: said once
            yield Emit(job)
            last = job
        if job["status"] in TERMINAL:
            return job
        if deadline.left() <= 0:
            raise WaitTimeout(job, timeout_s or 0.0)
        seen = yield from _patiently(
            changes(job_id, since=change, wait_s=deadline.left()), deadline
        )
        change = seen["change"]


def iterate(
    *,
    status: str | None = None,
    blueprint: str | None = None,
    labels: Mapping[str, str] | None = None,
    page_size: int = 50,
) -> Plan[None]:
    """Emit every job of the listing, newest first, page after page (the API's cursor)."""
    cursor: str | None = None
    while True:
        answer: Page = yield page(
            status=status, blueprint=blueprint, labels=labels, limit=page_size, cursor=cursor
        )
        for job in answer["jobs"]:
            yield Emit(job)
        cursor = answer["next_cursor"]
        if cursor is None:
            return


class Stepper:
    """Walks a plan for a driver: `next()` is the step to perform (None once the plan has
    ended), then `answer()` the call's answer or `fail()` its error."""

    def __init__(self, plan: Plan[Any]) -> None:
        self._plan = plan
        self._reply: Any = None
        self._failure: BaseException | None = None

    def next(self) -> Step | None:
        reply, failure = self._reply, self._failure
        self._reply, self._failure = None, None
        try:
            return self._plan.send(reply) if failure is None else self._plan.throw(failure)
        except StopIteration:
            return None

    def answer(self, reply: Any) -> None:
        self._reply = reply

    def fail(self, failure: BaseException) -> None:
        self._failure = failure


def returning(plan: Plan[T]) -> Plan[None]:
    """`plan`, with its return value emitted last: a driver that only iterates can then
    hand it back (`wait` is a plan that emits nothing but its answer)."""
    value = yield from plan
    yield Emit(value)
