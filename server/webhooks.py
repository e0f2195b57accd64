"""The webhook sender the engine's delivery loop calls (engine/runtime/webhooks.py): one
aiohttp session, owned by the app's cleanup_ctx, with a timeout per delivery.

The engine signs, schedules and retries; this module only makes the POST and reports the
status, turning every client-side failure into OSError as the engine's `Sender` contract
asks (an uncaught aiohttp error would end the delivery loop).
"""

from __future__ import annotations

from collections.abc import Mapping

import aiohttp

TIMEOUT_S = 10.0


class WebhookSender:
    def __init__(self, session: aiohttp.ClientSession) -> None:
        self.session = session

    @staticmethod
    def session_for_webhooks() -> aiohttp.ClientSession:
        return aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=TIMEOUT_S))

    async def __call__(self, url: str, body: bytes, headers: Mapping[str, str]) -> int:
        try:
            # No redirects: a receiver must answer at the URL the client gave.
            async with self.session.post(
                url, data=body, headers=dict(headers), allow_redirects=False
            ) as response:
                return response.status
        except aiohttp.ClientError as exc:
            raise OSError(f"{type(exc).__name__}: {exc}") from exc
