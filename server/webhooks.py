"""The webhook sender the engine's delivery loop calls (engine/runtime/webhooks.py): one
aiohttp session, owned by the app's cleanup_ctx, with a timeout per delivery.

The engine signs, schedules and retries; this module only makes the POST and reports the
status, turning every client-side failure into OSError as the engine's `Sender` contract
asks (an uncaught aiohttp error would end the delivery loop).

Every delivery checks its destination again (server/webhook_policy.py): the URL as written,
and, through the session's resolver, every address its host resolves to now.
"""

from __future__ import annotations

from collections.abc import Mapping

import aiohttp

from engine.runtime.webhooks import redact
from server.webhook_policy import FilteringResolver, WebhookPolicy, WebhookRefused

TIMEOUT_S = 10.0


class WebhookSender:
    def __init__(self, session: aiohttp.ClientSession, policy: WebhookPolicy) -> None:
        self.session = session
        self.policy = policy

    @staticmethod
    def session_for_webhooks(policy: WebhookPolicy) -> aiohttp.ClientSession:
        connector = aiohttp.TCPConnector(resolver=FilteringResolver(policy))
        return aiohttp.ClientSession(
            connector=connector, timeout=aiohttp.ClientTimeout(total=TIMEOUT_S)
        )

    async def __call__(self, url: str, body: bytes, headers: Mapping[str, str]) -> int:
        try:
            self.policy.check_url(url)  # literal addresses never reach the resolver
        except WebhookRefused as exc:
            raise OSError(f"refused destination: {redact(url)} {exc}") from None
        try:
            # No redirects: a receiver must answer at the URL the client gave.
            async with self.session.post(
                url, data=body, headers=dict(headers), allow_redirects=False
            ) as response:
                return response.status
        except aiohttp.ClientError as exc:
            message = str(exc).replace(url, redact(url))
            raise OSError(f"{type(exc).__name__}: {message}") from exc
