"""Request helpers shared by the server tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from aiohttp import ClientResponse, web
from aiohttp.test_utils import TestClient

ROOT = Path(__file__).resolve().parents[2]
BLUEPRINTS = ROOT / "blueprints"
EXAMPLES = len(list(BLUEPRINTS.glob("*.yaml")))  # the example blueprints, one per file
WORKER_TOKEN = "fleet-global-token"
ACME = {"X-Client-Token": "acme-token"}
GLOBEX = {"X-Client-Token": "globex-token"}

Client = TestClient[web.Request, web.Application]


def worker(worker_id: str = "w-solo", token: str = "solo-token") -> dict[str, str]:
    return {"X-Worker-ID": worker_id, "X-Worker-Token": token}


async def error_of(response: ClientResponse, status: int) -> dict[str, Any]:
    """The `error` object of a JSON error answer, after checking status and shape."""
    text = await response.text()
    assert response.status == status, text
    assert response.content_type == "application/json", text
    body = await response.json()
    assert set(body) == {"error"}, body
    assert set(body["error"]) == {"code", "message", "details"}, body
    error: dict[str, Any] = body["error"]
    return error


async def ok_json(response: ClientResponse, status: int = 200) -> Any:
    text = await response.text()
    assert response.status == status, text
    assert response.content_type == "application/json", text
    return await response.json()


async def submit(
    api: Client,
    endpoint: str,
    initial_data: Any,
    headers: dict[str, str] = ACME,
    **extra: Any,
) -> str:
    response = await api.post(
        f"/api/v1/{endpoint}", json={"initial_data": initial_data, **extra}, headers=headers
    )
    body = await ok_json(response, 202)
    assert body["status"] == "accepted"
    job_id: str = body["job_id"]
    return job_id


async def job(api: Client, job_id: str, headers: dict[str, str] = ACME, **query: Any) -> Any:
    return await ok_json(await api.get(f"/api/v1/jobs/{job_id}", params=query, headers=headers))


async def register(api: Client, skills: list[str], headers: dict[str, str] | None = None) -> None:
    headers = headers or worker()
    body = {
        "worker_id": headers["X-Worker-ID"],
        "worker_type": "test",
        "supported_skills": [{"name": s, "type": s} for s in skills],
        "available_skills": skills,
    }
    answer = await ok_json(await api.post("/_worker/workers/register", json=body, headers=headers))
    assert answer == {"status": "registered"}


async def poll(
    api: Client, skills: list[str], headers: dict[str, str] | None = None, wait: float = 5
) -> Any:
    """The next task for this worker, or None on 204."""
    headers = headers or worker()
    response = await api.get(
        f"/_worker/workers/{headers['X-Worker-ID']}/tasks/next",
        params={"timeout": str(wait), "available_skills": ",".join(skills)},
        headers=headers,
    )
    if response.status == 204:
        return None
    return await ok_json(response)


async def result(api: Client, body: dict[str, Any], headers: dict[str, str] | None = None) -> Any:
    response = await api.post("/_worker/tasks/result", json=body, headers=headers or worker())
    return await ok_json(response)
