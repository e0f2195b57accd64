"""A worker's large result is checked against its state's `output_schema` off the event
loop, as a client's large body is against `input_schema` (server/offload.py): the answer
is the same either way, and the loop serves everyone else while the check runs."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import pytest

from engine.blueprint.safe_schema import SafeValidator
from server.app import build_app
from server.offload import Offload
from server.state import OFFLOAD
from tests.server.conftest import make_settings, serve
from tests.server.helpers import ACME, Client, job, poll, register, result, submit

BLUEPRINT = """\
blueprint: checked_result
version: 1
api_endpoint: jobs/checked_result
start: work
states:
  work:
    task: produce
    output_schema:
      type: object
      properties:
        tags: {type: array, uniqueItems: true, items: {type: object, required: [id]}}
      required: [tags]
    on: {success: done}
  done: {end: finished}
"""

BIG_TAGS = [{"id": i, "v": [i]} for i in range(8000)]  # about 190 KB


async def started(tmp_path: Path, threshold: int | None = None) -> Client:
    folder = tmp_path / "blueprints"
    folder.mkdir(exist_ok=True)
    (folder / "checked.yaml").write_text(BLUEPRINT, encoding="utf-8")
    app = build_app(make_settings(tmp_path, BLUEPRINTS_DIR=str(folder)))
    if threshold is not None:
        app[OFFLOAD] = Offload(off_loop_bytes=threshold)
    return await serve(app)


async def answer(api: Client, data: Any) -> tuple[Any, dict[str, Any]]:
    """Submit a job, answer its task with `data`: (the result's answer, the job)."""
    job_id = await submit(api, "jobs/checked_result", {})
    await register(api, ["produce"])
    task = await poll(api, ["produce"])
    body = {"job_id": job_id, "task_id": task["task_id"], "data": data}
    return await result(api, body), await job(api, job_id)


async def test_a_large_result_gets_the_same_answer_off_the_loop(tmp_path: Path) -> None:
    outcomes: list[tuple[Any, ...]] = []
    for threshold in (1 << 30, 0):  # checked where it is applied, then on a thread
        api = await started(tmp_path, threshold)
        try:
            for data in (
                {"tags": [*BIG_TAGS, BIG_TAGS[5]]},  # not unique
                {"tags": [*BIG_TAGS, {"v": 1}, {"v": 2}]},  # two without an id
                {"tags": BIG_TAGS},  # fine
            ):
                reply, ended = await answer(api, data)
                error = ended.get("error") or {}
                outcomes.append((reply, ended["status"], error.get("code"), error.get("details")))
        finally:
            await api.close()
    assert outcomes[:3] == outcomes[3:]
    assert [o[1:3] for o in outcomes[:3]] == [
        ("failed", "INVALID_OUTPUT"),
        ("failed", "INVALID_OUTPUT"),
        ("finished", None),
    ]
    assert [d.split(":")[0] for d in outcomes[0][3]] == ["$.tags"]
    assert [d.split(":")[0] for d in outcomes[1][3]] == ["$.tags[8000]", "$.tags[8001]"]


async def test_the_loop_answers_while_a_large_result_is_checked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    api = await started(tmp_path)  # the default threshold: 64 KiB
    release = threading.Event()
    checking = asyncio.Event()
    loop = asyncio.get_running_loop()
    threads: list[str] = []
    real = SafeValidator.iter_errors

    def held(self: Any, instance: Any, *args: Any) -> Any:
        if isinstance(instance, dict) and "tags" in instance:  # the result's check
            threads.append(threading.current_thread().name)
            loop.call_soon_threadsafe(checking.set)
            release.wait(20)  # a check that lasts as long as the test wants
        return real(self, instance, *args)

    monkeypatch.setattr(SafeValidator, "iter_errors", held)
    try:
        # Given a large result whose check does not end
        answering = asyncio.create_task(answer(api, {"tags": BIG_TAGS}))
        async with asyncio.timeout(20):
            await checking.wait()
        # Then it is checked on a thread, and the loop answers other requests meanwhile
        assert [name.startswith("interlock-check") for name in threads] == [True]
        response = await api.get("/api/v1/blueprints", headers=ACME)
        assert response.status == 200
        assert not answering.done()
        # and once the check ends, the result is taken
        release.set()
        reply, ended = await answering
        assert (reply, ended["status"]) == ({"status": "accepted"}, "finished")
    finally:
        release.set()
        await api.close()


async def test_a_small_result_is_checked_where_it_is_applied(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    api = await started(tmp_path)
    threads: list[str] = []
    real = SafeValidator.iter_errors

    def noted(self: Any, instance: Any, *args: Any) -> Any:
        if isinstance(instance, dict) and "tags" in instance:
            threads.append(threading.current_thread().name)
        return real(self, instance, *args)

    monkeypatch.setattr(SafeValidator, "iter_errors", noted)
    try:
        reply, ended = await answer(api, {"tags": BIG_TAGS[:10]})
        assert (reply, ended["status"]) == ({"status": "accepted"}, "finished")
        assert threads == [threading.current_thread().name]  # the loop's: no thread hop
    finally:
        await api.close()
