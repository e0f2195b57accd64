"""Webhooks through the whole app: `build_app` wires the engine's delivery loop to aiohttp."""

from __future__ import annotations

import asyncio
import json
import socket
from pathlib import Path

import pytest
from aiohttp import web

from engine.runtime.webhooks import verify
from server.app import build_app
from server.webhook_policy import WebhookPolicy
from server.webhooks import WebhookSender
from tests.server.conftest import make_settings, serve
from tests.server.helpers import ACME, ok_json, submit


async def test_a_finished_job_is_posted_to_its_webhook_signed_and_retried(
    tmp_path: Path,
) -> None:
    # Given a receiver that fails its first delivery, and the full app on memory://
    received: list[tuple[dict[str, str], bytes]] = []
    two = asyncio.Event()

    async def hook(request: web.Request) -> web.Response:
        received.append((dict(request.headers), await request.read()))
        if len(received) == 2:
            two.set()
        return web.Response(status=503 if len(received) == 1 else 204)

    receiver_app = web.Application()
    receiver_app.router.add_post("/hook", hook)
    receiver = await serve(receiver_app)
    api = await serve(
        build_app(make_settings(tmp_path, WEBHOOK_SECRET="hook-secret", WEBHOOK_ALLOW="127.0.0.1"))
    )
    try:
        # When a job with a webhook_url ends
        url = str(receiver.make_url("/hook"))
        job_id = await submit(api, "jobs/image_pipeline", {"url": "x"}, webhook_url=url)
        await ok_json(await api.post(f"/api/v1/jobs/{job_id}/cancel", headers=ACME))
        # Then it is delivered, again after the failure, signed with WEBHOOK_SECRET
        async with asyncio.timeout(15):
            await two.wait()
    finally:
        await api.close()
        await receiver.close()
    headers, body = received[1]
    assert verify("hook-secret", headers["X-Interlock-Signature"], body)
    assert not verify("other-secret", headers["X-Interlock-Signature"], body)
    payload = json.loads(body)
    assert payload["event"] == "job_cancelled"
    assert payload["job_id"] == job_id
    assert headers["X-Interlock-Delivery"] == f"{job_id}-2"


async def test_an_unreachable_receiver_is_an_oserror() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    policy = WebhookPolicy.from_text("127.0.0.1")
    async with WebhookSender.session_for_webhooks(policy) as session:
        sender = WebhookSender(session, policy)
        with pytest.raises(OSError, match="ClientConnectorError"):
            await sender(f"http://127.0.0.1:{port}/hook", b"{}", {})
        with pytest.raises(OSError, match="refused destination"):
            await sender("http://[not a url/hook", b"{}", {})
