"""The asyncio client, on aiohttp: the same methods as the blocking `Client`, awaited."""

from __future__ import annotations

import asyncio
import builtins
from collections.abc import AsyncIterator, Mapping
from types import TracebackType
from typing import Any, TypeVar, Unpack

import aiohttp

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


class AsyncClient:
    """The asyncio twin of `Client`, with the same arguments and methods. Use it as an async
    context manager, or `await client.close()`; its session is made on first use, inside
    the running event loop."""

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
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    # -- the API (documented on Client) ------------------------------------------------------

    async def submit(
        self, endpoint: str, data: Mapping[str, Any] | None = None, **options: Unpack[SubmitOptions]
    ) -> Submitted:
        return await self.call(calls.submit(endpoint, data, **options))

    async def get(self, job_id: str, *, include_input: bool = False) -> Job:
        return await self.call(calls.get(job_id, include_input=include_input))

    # The same `timeout` as Client.wait: on it, WaitTimeout carries the job's last view,
    # which a cancellation by asyncio.timeout() could not.
    async def wait(self, job_id: str, *, timeout: float | None = None) -> Job:  # noqa: ASYNC109
        return await self._complete(calls.wait(job_id, timeout))

    def follow(self, job_id: str, *, timeout: float | None = None) -> AsyncIterator[Job]:
        return self._iterate(calls.follow(job_id, timeout))

    async def changes(self, job_id: str, *, since: str | None = None, wait: float = 0.0) -> Change:
        return await self.call(calls.changes(job_id, since=since, wait_s=wait))

    async def history(self, job_id: str) -> builtins.list[Event]:
        return await self.call(calls.history(job_id))

    async def graph(self, job_id: str) -> str:
        return await self.call(calls.graph(job_id))

    async def cancel(self, job_id: str) -> Job:
        return await self.call(calls.cancel(job_id))

    async def approve(self, job_id: str, decision: str) -> Job:
        return await self.call(calls.approve(job_id, decision))

    async def send_event(
        self, job_id: str, name: str, payload: Mapping[str, Any] | None = None
    ) -> Job:
        return await self.call(calls.send_event(job_id, name, payload))

    async def pause(self, job_id: str) -> Job:
        return await self.call(calls.pause(job_id))

    async def resume(self, job_id: str) -> Job:
        return await self.call(calls.resume(job_id))

    async def redrive(
        self, job_id: str, initial_data_patch: Mapping[str, Any] | None = None
    ) -> Job:
        return await self.call(calls.redrive(job_id, initial_data_patch))

    async def rerun(
        self, job_id: str, from_state: str, initial_data_patch: Mapping[str, Any] | None = None
    ) -> Job:
        return await self.call(calls.rerun(job_id, from_state, initial_data_patch))

    async def explain(self, job_id: str) -> Explanation:
        return await self.call(calls.explain(job_id))

    def list(
        self,
        *,
        status: str | None = None,
        blueprint: str | None = None,
        labels: Mapping[str, str] | None = None,
        page_size: int = 50,
    ) -> AsyncIterator[JobSummary]:
        plan = calls.iterate(status=status, blueprint=blueprint, labels=labels, page_size=page_size)
        return self._iterate(plan)

    async def page(
        self,
        *,
        status: str | None = None,
        blueprint: str | None = None,
        labels: Mapping[str, str] | None = None,
        limit: int | None = None,
        cursor: str | None = None,
    ) -> Page:
        return await self.call(
            calls.page(
                status=status, blueprint=blueprint, labels=labels, limit=limit, cursor=cursor
            )
        )

    # -- the machinery ---------------------------------------------------------------------

    async def call(self, call: Call[T]) -> T:
        """Make one request and read its answer (raising the API's error as an ApiError)."""
        if self._session is None:
            self._session = aiohttp.ClientSession(headers=self._headers)
        body = call.encoded_body()
        sent = dict(call.headers)
        if body is not None:
            sent["Content-Type"] = "application/json"
        read = self.timeout + (call.wait_s + calls.LONG_POLL_MARGIN_S if call.wait_s else 0.0)
        timeout = aiohttp.ClientTimeout(connect=self.timeout, sock_read=read)
        try:
            async with self._session.request(
                call.method,
                self.url + call.path,
                params=call.query,
                data=body,
                headers=sent,
                timeout=timeout,
                allow_redirects=False,
            ) as answer:
                response = Response(answer.status, await answer.read())
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise TransportError(self.url, str(exc) or type(exc).__name__) from None
        return call.read(response)

    async def _iterate(self, plan: Plan[Any]) -> AsyncIterator[Any]:
        stepper = Stepper(plan)
        while (step := stepper.next()) is not None:
            if isinstance(step, Emit):
                yield step.value
            elif isinstance(step, Sleep):
                await asyncio.sleep(step.seconds)
            else:
                try:
                    stepper.answer(await self.call(step))
                except ClientError as exc:
                    stepper.fail(exc)

    async def _complete(self, plan: Plan[T]) -> T:
        async for value in self._iterate(calls.returning(plan)):
            last: T = value
        return last
