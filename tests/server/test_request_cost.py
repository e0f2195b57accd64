"""What the HTTP layer costs a request, counted rather than timed.

A linear job's requests (submit, polls, results, the read of the finished job) go through
aiohttp and the server package before and after the engine's work. Here the Python calls,
and calls into C, that this layer makes on the event loop's thread are counted with
`sys.setprofile` for the same jobs, and bounded. The client runs in a thread of its own
(sys.setprofile counts one thread), over one kept-alive connection as a load client would.
The engine's own calls are not counted: only frames of aiohttp and `server/`, and what they
call into C.

For these requests (8 a job, METRICS=on, the default) the layer made 307 calls a request
while the three API areas were sub-applications (a second router, two more middleware
layers, the app state looked up through both applications on every access, security
headers set one by one on every answer); served as routes of one router it makes 220.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import sys
from pathlib import Path
from types import FrameType
from typing import Any

import aiohttp

import server
from server.app import build_app_around
from tests.server.conftest import make_settings, serve, started

STEPS = {
    "fetch_image": {"path": "/tmp/cat.png"},
    "resize_image": {"path": "/tmp/small.png"},
    "publish_image": {"url": "https://cdn/x.png"},
}
CLIENT = {"X-Client-Token": "acme-token", "Content-Type": "application/json"}
WORKER = {
    "X-Worker-ID": "w-solo",
    "X-Worker-Token": "solo-token",
    "Content-Type": "application/json",
}
JOBS = 20
REQUESTS = 2 + 2 * len(STEPS)  # a job's: submit, a poll and a result per task, the read
BOUND = 250  # calls the HTTP layer may make a request
LAYER = (str(Path(aiohttp.__file__).parent), str(Path(server.__file__).parent))


class Api:
    """Blocking requests over one kept-alive connection (for a thread of its own)."""

    def __init__(self, port: int) -> None:
        self.connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)

    def call(
        self, method: str, path: str, body: Any = None, headers: dict[str, str] = CLIENT
    ) -> Any:
        data = None if body is None else json.dumps(body).encode()
        self.connection.request(method, path, body=data, headers=headers)
        response = self.connection.getresponse()
        text = response.read()
        assert response.status in (200, 202), (response.status, text)
        return json.loads(text)

    def register(self) -> None:
        body = {"worker_id": "w-solo", "supported_skills": [{"name": s} for s in STEPS]}
        assert (
            self.call("POST", "/_worker/workers/register", body, WORKER)["status"] == "registered"
        )

    def jobs(self, count: int) -> None:
        """`count` image_pipeline jobs, one after the other (REQUESTS requests each)."""
        skills = ",".join(STEPS)
        for _ in range(count):
            submitted = {"initial_data": {"url": "https://example.com/cat.png"}}
            job_id = self.call("POST", "/api/v1/jobs/image_pipeline", submitted)["job_id"]
            for _ in STEPS:
                poll = f"/_worker/workers/w-solo/tasks/next?timeout=5&available_skills={skills}"
                task = self.call("GET", poll, None, WORKER)
                result = {"job_id": job_id, "task_id": task["task_id"], "data": STEPS[task["type"]]}
                answer = self.call("POST", "/_worker/tasks/result", result, WORKER)
                assert answer == {"status": "accepted"}
            finished = self.call("GET", f"/api/v1/jobs/{job_id}?wait=5")
            assert finished["status"] == "finished", finished


def in_layer(frame: FrameType | None) -> bool:
    return frame is not None and frame.f_code.co_filename.startswith(LAYER)


async def layer_calls_per_request(tmp_path: Path) -> tuple[float, float]:
    """(the HTTP layer's calls, every call) on the event loop's thread per request."""
    settings = make_settings(tmp_path)
    async with started(settings) as orchestrator:
        client = await serve(build_app_around(orchestrator, settings))
        api = Api(client.port or 0)
        try:
            await asyncio.to_thread(api.register)
            await asyncio.to_thread(api.jobs, 3)  # warm-up: caches, lazy imports
            calls = layer = 0

            def count(frame: FrameType, event: str, arg: Any) -> None:
                nonlocal calls, layer
                if event == "call":
                    calls += 1
                    # the layer's frames, less the engine calling back into it
                    layer += in_layer(frame) and not _engine(frame.f_back)
                elif event == "c_call":
                    calls += 1
                    layer += in_layer(frame)

            sys.setprofile(count)
            try:
                await asyncio.to_thread(api.jobs, JOBS)
            finally:
                sys.setprofile(None)
            return layer / (JOBS * REQUESTS), calls / (JOBS * REQUESTS)
        finally:
            api.connection.close()
            await client.close()


def _engine(frame: FrameType | None) -> bool:
    return frame is not None and "/engine/" in frame.f_code.co_filename


async def test_the_http_layer_makes_a_bounded_number_of_calls_a_request(tmp_path: Path) -> None:
    layer, calls = await layer_calls_per_request(tmp_path)
    problem = f"the HTTP layer made {layer:.0f} calls a request (of {calls:.0f} in all)"
    assert layer >= 50, "the requests were not counted: " + problem
    assert layer <= BOUND, problem
