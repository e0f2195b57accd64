"""Item 8: approval links never from the Host header; no server version and the usual
security headers; 415 for bodies that are not JSON; generated tokens shared through the
store by every orchestrator on it."""

from __future__ import annotations

from pathlib import Path

import pytest

from server.config import Settings
from server.main import shared_generated
from tests.server.conftest import make_settings
from tests.server.helpers import ACME, BLUEPRINTS, Client, error_of, ok_json, submit

EXPENSE = {"amount": 12.5, "employee": "ada"}


async def test_approval_links_ignore_the_host_header(api: Client) -> None:
    # Given a job waiting for a person, read with a forged Host header
    job_id = await submit(api, "jobs/expense_approval", EXPENSE)
    forged = {**ACME, "Host": "attacker.example:80"}
    view = await ok_json(await api.get(f"/api/v1/jobs/{job_id}", headers=forged))
    assert view["status"] == "waiting_for_human"
    link = view["approval"]["link"]
    # Then the link points to the address the server is bound to
    assert "attacker" not in link
    assert link.startswith(f"http://127.0.0.1:{api.port}/_public/approvals/{job_id}/")
    described = await ok_json(await api.get(link.split(str(api.port), 1)[1], headers=forged))
    assert "attacker" not in described["how_to_decide"]["url"]


@pytest.mark.parametrize(
    "path", ["/api/v1/blueprints", "/_public/status", "/api/v1/no-such-thing", "/nowhere"]
)
async def test_answers_carry_no_version_and_the_usual_security_headers(
    api: Client, path: str
) -> None:
    response = await api.get(path, headers=ACME)
    assert response.headers["Server"] == "Interlock"
    assert "aiohttp" not in str(response.headers).lower()
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["X-Frame-Options"] == "DENY"
    assert response.headers["Referrer-Policy"] == "no-referrer"
    assert "default-src 'none'" in response.headers["Content-Security-Policy"]
    assert response.headers["Cache-Control"] == "no-store"


@pytest.mark.parametrize(
    "content_type", ["text/plain", "application/x-www-form-urlencoded", "application/xml"]
)
async def test_a_body_that_is_not_json_gets_415(api: Client, content_type: str) -> None:
    body = b'{"initial_data": {"url": "x"}}'
    headers = {**ACME, "Content-Type": content_type}
    response = await api.post("/api/v1/jobs/image_pipeline", data=body, headers=headers)
    error = await error_of(response, 415)
    assert "application/json" in error["message"]


@pytest.mark.parametrize("content_type", ["application/json", "application/json; charset=utf-8"])
async def test_json_content_types_are_accepted(api: Client, content_type: str) -> None:
    body = b'{"initial_data": {"url": "x"}}'
    headers = {**ACME, "Content-Type": content_type}
    await ok_json(await api.post("/api/v1/jobs/image_pipeline", data=body, headers=headers), 202)


def generated(tmp_path: Path, redis_url: str) -> Settings:
    return Settings.from_sources({"BLUEPRINTS_DIR": str(BLUEPRINTS), "REDIS_URL": redis_url})


async def test_orchestrators_without_configured_tokens_share_the_generated_ones(
    tmp_path: Path, redis_url: str
) -> None:
    # Given two orchestrators' settings, each generating its own tokens
    first, second = generated(tmp_path, redis_url), generated(tmp_path, redis_url)
    assert first.client_tokens != second.client_tokens
    # When each starts on the same store
    first, second = await shared_generated(first), await shared_generated(second)
    # Then the second uses the first one's tokens and secret
    assert first.client_tokens == second.client_tokens
    assert first.worker_token == second.worker_token
    assert first.webhook_secret == second.webhook_secret
    # and configured tokens are left as they are
    configured = make_settings(tmp_path, WEBHOOK_SECRET="s", REDIS_URL=redis_url)
    assert await shared_generated(configured) is configured
