"""The blocking client, on urllib3.

urllib3 rather than httpx: it keeps connections alive in a pool, takes connect and read
timeouts per request and has no dependencies of its own (httpx brings httpcore, h11, anyio,
sniffio, certifi and idna); httpx's draw, one API for sync and async, does not apply since
the async client is aiohttp's. No event loop runs behind this client.
"""

from __future__ import annotations

import builtins
import time
from collections.abc import Iterator, Mapping
from types import TracebackType
from typing import Any, TypeVar, Unpack
from urllib.parse import urlencode

import urllib3

from interlock_client import calls
from interlock_client.calls import Call, Emit, Plan, Response, Sleep, Stepper
from interlock_client.config import DEFAULT_TIMEOUT_S, base_url, client_token, headers
from interlock_client.errors import ClientError, TransportError
from interlock_client.models import (
    Change,
    Event,
    Explanation,
    Job,
    JobSummary,
    Page,
    SubmitOptions,
    Submitted,
)

T = TypeVar("T")


class Client:
    """A client of one Interlock server. Arguments win over the environment:

    - `url`: the server (INTERLOCK_URL, default http://127.0.0.1:8080);
    - `token`: the client token sent as X-Client-Token (INTERLOCK_CLIENT_TOKEN);
    - `timeout`: seconds to connect, and to read an answer (a long poll adds its wait).

    Use it as a context manager, or call `close()`, to release its connections.
    """

    def __init__(
        self,
        url: str | None = None,
        token: str | None = None,
        *,
        timeout: float = DEFAULT_TIMEOUT_S,
    ) -> None:
        self.url = base_url(url)
        self.timeout = timeout
        self._headers = headers(client_token(token))
        self._http = urllib3.PoolManager(retries=False)

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self._http.clear()

    # -- the API ---------------------------------------------------------------------------

    def submit(
        self, endpoint: str, data: Mapping[str, Any] | None = None, **options: Unpack[SubmitOptions]
    ) -> Submitted:
        """Start a job at a blueprint's `api_endpoint` (e.g. "jobs/reminder") with `data` as
        its initial_data; `options` are those of SubmitOptions (labels, idempotency_key,
        job_id, webhook_url, dispatch_timeout, result_timeout)."""
        return self.call(calls.submit(endpoint, data, **options))

    def get(self, job_id: str, *, include_input: bool = False) -> Job:
        return self.call(calls.get(job_id, include_input=include_input))

    def wait(self, job_id: str, *, timeout: float | None = None) -> Job:
        """The job once it has ended (finished, failed or cancelled). Raises WaitTimeout
        after `timeout` seconds (None: waits as long as it takes)."""
        return self._complete(calls.wait(job_id, timeout))

    def follow(self, job_id: str, *, timeout: float | None = None) -> Iterator[Job]:
        """The job's view now and after each change (state, progress, ...), until it ends."""
        return self._iterate(calls.follow(job_id, timeout))

    def changes(self, job_id: str, *, since: str | None = None, wait: float = 0.0) -> Change:
        return self.call(calls.changes(job_id, since=since, wait_s=wait))

    def history(self, job_id: str) -> builtins.list[Event]:
        return self.call(calls.history(job_id))

    def graph(self, job_id: str) -> str:
        """The job's blueprint as Graphviz DOT with the job's path drawn on it."""
        return self.call(calls.graph(job_id))

    def cancel(self, job_id: str) -> Job:
        return self.call(calls.cancel(job_id))

    def approve(self, job_id: str, decision: str) -> Job:
        """Decide the approval the job waits for ("approve", "reject", ...)."""
        return self.call(calls.approve(job_id, decision))

    def send_event(self, job_id: str, name: str, payload: Mapping[str, Any] | None = None) -> Job:
        """Deliver the event `name` (with `payload`, default {}) to the listen state the job
        waits in; Conflict `not_listening` when it waits for no such event now."""
        return self.call(calls.send_event(job_id, name, payload))

    def pause(self, job_id: str) -> Job:
        """Hold the job in its state until `resume`."""
        return self.call(calls.pause(job_id))

    def resume(self, job_id: str) -> Job:
        return self.call(calls.resume(job_id))

    def redrive(self, job_id: str, initial_data_patch: Mapping[str, Any] | None = None) -> Job:
        """Run a failed or cancelled job again from the state that failed, its initial_data
        merged with `initial_data_patch` (a JSON Merge Patch) if given."""
        return self.call(calls.redrive(job_id, initial_data_patch))

    def rerun(
        self, job_id: str, from_state: str, initial_data_patch: Mapping[str, Any] | None = None
    ) -> Job:
        """Run an ended job (a finished one too) again from `from_state`."""
        return self.call(calls.rerun(job_id, from_state, initial_data_patch))

    def explain(self, job_id: str) -> Explanation:
        return self.call(calls.explain(job_id))

    def list(
        self,
        *,
        status: str | None = None,
        blueprint: str | None = None,
        labels: Mapping[str, str] | None = None,
        page_size: int = 50,
    ) -> Iterator[JobSummary]:
        """Every job of this client (or those with `status`, of `blueprint`, carrying every
        one of `labels`), newest first, fetched a page at a time as the iteration goes."""
        plan = calls.iterate(status=status, blueprint=blueprint, labels=labels, page_size=page_size)
        return self._iterate(plan)

    def page(
        self,
        *,
        status: str | None = None,
        blueprint: str | None = None,
        labels: Mapping[str, str] | None = None,
        limit: int | None = None,
        cursor: str | None = None,
    ) -> Page:
        """One page of the listing; its `next_cursor` asks for the next one."""
        return self.call(
            calls.page(
                status=status, blueprint=blueprint, labels=labels, limit=limit, cursor=cursor
            )
        )

    # -- the machinery ---------------------------------------------------------------------

    def call(self, call: Call[T]) -> T:
        """Make one request and read its answer (raising the API's error as an ApiError)."""
        url = self.url + call.path
        if call.query:
            url += "?" + urlencode(call.query)
        body = call.encoded_body()
        sent = {**self._headers, **call.headers}
        if body is not None:
            sent["Content-Type"] = "application/json"
        read = self.timeout + (call.wait_s + calls.LONG_POLL_MARGIN_S if call.wait_s else 0.0)
        try:
            answer = self._http.request(
                call.method,
                url,
                body=body,
                headers=sent,
                timeout=urllib3.Timeout(connect=self.timeout, read=read),
                redirect=False,
            )
        except urllib3.exceptions.HTTPError as exc:
            raise TransportError(self.url, _reason(exc)) from None
        return call.read(Response(answer.status, answer.data))

    def _iterate(self, plan: Plan[Any]) -> Iterator[Any]:
        stepper = Stepper(plan)
        while (step := stepper.next()) is not None:
            if isinstance(step, Emit):
                yield step.value
            elif isinstance(step, Sleep):
                time.sleep(step.seconds)
            else:
                try:
                    stepper.answer(self.call(step))
                except ClientError as exc:
                    stepper.fail(exc)

    def _complete(self, plan: Plan[T]) -> T:
        for value in self._iterate(calls.returning(plan)):
            last: T = value
        return last


def _reason(exc: urllib3.exceptions.HTTPError) -> str:
    """The cause without urllib3's object reprs ("Connection refused", "read timed out")."""
    reason = getattr(exc, "reason", None) or exc
    return str(reason).rsplit(">: ", 1)[-1]
