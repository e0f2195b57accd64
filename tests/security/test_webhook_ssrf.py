"""Item 1 of the hostile-input pass: webhooks go to public destinations only.

Submit refuses a URL that is malformed or points into the server's own network (a 400
naming `webhook_url`); delivery checks the addresses the host resolves to at that time;
redirects are not followed; `WEBHOOK_ALLOW` opens internal receivers; logs show no
user-info or path.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from aiohttp.abc import AbstractResolver, ResolveResult

from server.app import build_app
from server.webhook_policy import (
    MAX_URL_LENGTH,
    FilteringResolver,
    WebhookPolicy,
    WebhookRefused,
    _refusal,
    ipv4_literal,
)
from server.webhooks import WebhookSender
from tests.server.conftest import make_settings, serve
from tests.server.helpers import ACME, Client, error_of, ok_json, submit

REFUSED = [
    "http://127.0.0.1:6379/",
    "http://[::1]/hook",
    "http://169.254.169.254/latest/meta-data/",
    "http://metadata.google.internal/computeMetadata/v1/",
    "http://0x7f000001/hook",
    "http://2130706433/hook",
    "http://0177.0.0.1/hook",
    "http://127.1/hook",
    "http://[::ffff:127.0.0.1]/hook",
    "http://localhost:8080/hook",
    "http://10.1.2.3/hook",
    "http://192.168.0.1/hook",
    "http://100.64.0.1/hook",
    "http://224.0.0.1/hook",
    "http://0.0.0.0/hook",
    "http://redis:6379/",
    "http://hooks.example.com:99999/hook",
    "http://hooks.example.com:0/hook",
    "http://hooks.example.com/a\r\nX-Injected: 1",
    "http://hooks.example.com/a b",
    "ftp://hooks.example.com/",
    "http:///no-host",
]


@pytest.mark.parametrize("url", REFUSED)
async def test_a_webhook_into_the_servers_network_or_malformed_gets_a_400(
    api: Client, url: str
) -> None:
    body = {"initial_data": {"url": "x"}, "webhook_url": url}
    response = await api.post("/api/v1/jobs/image_pipeline", json=body, headers=ACME)
    error = await error_of(response, 400)
    assert [d["path"] for d in error["details"]] == ["$.webhook_url"]


async def test_a_public_webhook_is_accepted(api: Client) -> None:
    await submit(
        api, "jobs/image_pipeline", {"url": "x"}, webhook_url="https://hooks.example.com/x"
    )


async def test_webhook_allow_opens_internal_receivers(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, WEBHOOK_ALLOW="127.0.0.1, 10.0.0.0/8, hooks.corp")
    api = await serve(build_app(settings))
    try:
        for url in ("http://127.0.0.1:9/h", "http://10.9.8.7/h", "http://hooks.corp/h"):
            await submit(api, "jobs/image_pipeline", {"url": "x"}, webhook_url=url)
        body = {"initial_data": {"url": "x"}, "webhook_url": "http://192.168.1.1/h"}
        response = await api.post("/api/v1/jobs/image_pipeline", json=body, headers=ACME)
        await error_of(response, 400)
    finally:
        await api.close()


def test_ipv4_literals_are_read_as_resolvers_read_them() -> None:
    assert str(ipv4_literal("0x7f000001")) == "127.0.0.1"
    assert str(ipv4_literal("2130706433")) == "127.0.0.1"
    assert str(ipv4_literal("0177.0.0.1")) == "127.0.0.1"
    assert ipv4_literal("example.com") is None
    assert ipv4_literal("cafe") is None


class FixedResolver(AbstractResolver):
    """Resolves every name to 127.0.0.1, as a DNS record changed after submit would."""

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        return [
            {
                "hostname": host,
                "host": "127.0.0.1",
                "port": port,
                "family": socket.AF_INET,
                "proto": 0,
                "flags": socket.AI_NUMERICHOST,
            }
        ]

    async def close(self) -> None:
        pass


async def receiver() -> tuple[Client, list[str]]:
    hits: list[str] = []

    async def hook(request: web.Request) -> web.Response:
        hits.append(request.path)
        return web.Response(status=204)

    async def redirect(request: web.Request) -> web.Response:
        hits.append(request.path)
        raise web.HTTPFound(f"http://127.0.0.1:{request.url.port}/hook")

    app = web.Application()
    app.router.add_post("/hook", hook)
    app.router.add_post("/redirect", redirect)
    return await serve(app), hits


async def post_with(policy: WebhookPolicy, url: str) -> int:
    """POST as the server's sender does, with every name resolving to 127.0.0.1."""
    connector = aiohttp.TCPConnector(resolver=FilteringResolver(policy, inner=FixedResolver()))
    async with aiohttp.ClientSession(connector=connector) as session:
        return await WebhookSender(session, policy)(url, b"{}", {})


async def test_delivery_checks_the_address_the_name_resolves_to_now() -> None:
    # Given a receiver on 127.0.0.1 and a public-looking name that now resolves there
    server, hits = await receiver()
    try:
        url = f"http://hooks.example.com:{server.port}/hook"
        # When the default policy delivers: refused before connecting
        with pytest.raises(OSError, match="not a public address"):
            await post_with(WebhookPolicy(), url)
        assert hits == []
        # (and with the address allowed the very same call does reach it)
        assert await post_with(WebhookPolicy.from_text("127.0.0.0/8"), url) == 204
        assert hits == ["/hook"]
    finally:
        await server.close()


async def test_redirects_are_not_followed() -> None:
    server, hits = await receiver()
    try:
        policy = WebhookPolicy.from_text("redirector.example.com")
        url = f"http://redirector.example.com:{server.port}/redirect"
        assert await post_with(policy, url) == 302
        assert hits == ["/redirect"]  # the redirect's target on 127.0.0.1 was not called
    finally:
        await server.close()


async def test_failed_deliveries_log_no_credentials_or_path(tmp_path: Path) -> None:
    # Given a webhook with user-info and a secret path to a closed port on an allowed host
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://hookuser:HookPassw0rd@127.0.0.1:{port}/T000/B000/PathSecret"
    records: list[logging.LogRecord] = []
    failed = asyncio.Event()

    class Catch(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)
            if "failed" in record.getMessage():
                failed.set()

    handler = Catch(logging.DEBUG)
    logger = logging.getLogger("interlock")
    logger.addHandler(handler)
    api = await serve(build_app(make_settings(tmp_path, WEBHOOK_ALLOW="127.0.0.1")))
    try:
        job_id = await submit(api, "jobs/image_pipeline", {"url": "x"}, webhook_url=url)
        await ok_json(await api.post(f"/api/v1/jobs/{job_id}/cancel", headers=ACME))
        async with asyncio.timeout(10):
            await failed.wait()
    finally:
        await api.close()
        logger.removeHandler(handler)
    text = "\n".join(r.getMessage() for r in records)
    assert f"http://127.0.0.1:{port}/..." in text
    for secret in ("hookuser", "HookPassw0rd", "PathSecret", "T000"):
        assert secret not in text


def test_a_url_checked_again_gets_the_same_answer_from_memory() -> None:
    """Submit and every delivery check the URL: the answer, a function of the URL and the
    policy alone, is remembered for the last URLs (short ones only)."""
    policy = WebhookPolicy()
    _refusal.cache_clear()
    for _ in range(2):
        with pytest.raises(WebhookRefused, match="a loopback address"):
            policy.check_url("http://127.0.0.1/hook")
        assert policy.check_url("https://hooks.example.com/x") == "https://hooks.example.com/x"
    assert _refusal.cache_info().hits == 2
    allowing = WebhookPolicy.from_text("127.0.0.1")  # another policy: asked afresh
    assert allowing.check_url("http://127.0.0.1/hook") == "http://127.0.0.1/hook"
    with pytest.raises(WebhookRefused, match="longer than"):
        policy.check_url("https://hooks.example.com/" + "x" * MAX_URL_LENGTH)
    assert _refusal.cache_info().currsize == 3
