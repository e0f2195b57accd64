"""Item 2: a worker id with its own workers.toml entry is bound to its own token on every
route, and `task_types` limits what a worker (or a fleet) may poll."""

from __future__ import annotations

from pathlib import Path

import pytest

from server.app import build_app
from server.config import Settings
from server.errors import ConfigError
from tests.server.conftest import make_settings, serve
from tests.server.helpers import (
    WORKER_TOKEN,
    Client,
    error_of,
    ok_json,
    poll,
    register,
    submit,
    worker,
)

#: w-solo has its own entry; WORKER_TOKEN (the fleet-wide one) is also set.
IMPERSONATIONS = [
    ("POST", "/_worker/workers/register", {"worker_id": "w-solo"}),
    ("PATCH", "/_worker/workers/w-solo", {"current_tasks": []}),
    ("GET", "/_worker/workers/w-solo/tasks/next?timeout=0", None),
    ("POST", "/_worker/tasks/result", {"job_id": "j", "task_id": "t"}),
    ("POST", "/_worker/tasks/results", {"results": [{"job_id": "j", "task_id": "t"}]}),
    ("POST", "/_worker/events", {"event_type": "progress"}),
]


@pytest.mark.parametrize(("method", "path", "body"), IMPERSONATIONS)
@pytest.mark.parametrize("token", [WORKER_TOKEN, "gpu-token"])
async def test_an_id_with_its_own_entry_refuses_shared_tokens(
    api: Client, method: str, path: str, body: object, token: str
) -> None:
    response = await api.request(method, path, json=body, headers=worker("w-solo", token))
    error = await error_of(response, 403)
    assert error["message"] == "Unauthorized: wrong X-Worker-Token for worker 'w-solo'"


async def test_a_result_for_a_task_leased_to_another_id_is_not_taken_with_the_shared_token(
    api: Client,
) -> None:
    # Given a task leased to w-solo
    job_id = await submit(api, "jobs/image_pipeline", {"url": "x"})
    await register(api, ["fetch_image"])
    task = await poll(api, ["fetch_image"])
    assert task is not None
    # When someone with the fleet-wide token posts its result as w-solo: refused
    body = {"job_id": job_id, "task_id": task["task_id"], "result": {"data": {}}}
    response = await api.post(
        "/_worker/tasks/result", json=body, headers=worker("w-solo", WORKER_TOKEN)
    )
    await error_of(response, 403)
    # while w-solo itself is heard
    answer = await ok_json(await api.post("/_worker/tasks/result", json=body, headers=worker()))
    assert answer["status"] != "ignored", answer


WORKERS_TOML = """\
[fetcher-1]
token = "fetcher-token"
task_types = ["fetch_*"]

["resizer-*"]
token = "resizer-token"
task_types = ["resize_image"]
"""


def restricted(tmp_path: Path) -> Settings:
    workers = tmp_path / "restricted-workers.toml"
    workers.write_text(WORKERS_TOML, encoding="utf-8")
    return make_settings(tmp_path, WORKERS_CONFIG_PATH=str(workers))


async def test_task_types_limit_what_a_worker_and_a_fleet_may_poll(tmp_path: Path) -> None:
    api = await serve(build_app(restricted(tmp_path)))
    try:
        # Given a queued fetch_image task
        await submit(api, "jobs/image_pipeline", {"url": "x"})
        # A resizer fleet member asking for it gets nothing (its token allows resize_image)
        resizer = worker("resizer-3", "resizer-token")
        assert await poll(api, ["fetch_image"], resizer, wait=0) is None
        # fetcher-1 may poll fetch_* only: it gets the task, whatever else it asks for
        fetcher = worker("fetcher-1", "fetcher-token")
        task = await poll(api, ["fetch_image", "resize_image"], fetcher, wait=5)
        assert task is not None
        assert task["type"] == "fetch_image", task
    finally:
        await api.close()


def test_task_types_must_be_a_list_of_names(tmp_path: Path) -> None:
    workers = tmp_path / "bad-workers.toml"
    workers.write_text('[w]\ntoken = "t"\ntask_types = "fetch_image"\n', encoding="utf-8")
    with pytest.raises(ConfigError, match=r"task_types must be a list"):
        make_settings(tmp_path, WORKERS_CONFIG_PATH=str(workers))
