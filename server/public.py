"""Public endpoints under `/_public`: no authentication, for load balancers and probes."""

from __future__ import annotations

from aiohttp import web

from server.errors import error_response, json_response
from server.state import orchestrator


async def status(request: web.Request) -> web.Response:
    """200 while the store answers PING, 503 otherwise."""
    if await orchestrator(request).store.ping():
        return json_response({"status": "ok", "store": "reachable"})
    return error_response(503, "store_unavailable", "the job store does not answer")


def public_app() -> web.Application:
    app = web.Application()
    app.router.add_get("/status", status)
    return app
