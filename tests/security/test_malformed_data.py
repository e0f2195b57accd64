"""Item 4: data JSON can carry but the store cannot keep gets a 400 naming the field, and
the worker SDK refuses a result the orchestrator could not take, at once."""

from __future__ import annotations

import os

import pytest

from tests.server.helpers import ACME, Client, error_of, register, worker
from worker_sdk.errors import PermanentError
from worker_sdk.outcome import error_of as sdk_error_of
from worker_sdk.outcome import from_return

LONE = "\\ud800"  # as JSON text: a lone high surrogate
JSON = {"Content-Type": "application/json"}

CASES = [
    # (method, path, body, the field named)
    (
        "POST",
        "/api/v1/jobs/image_pipeline",
        '{"initial_data": {"url": "%s"}}',
        "$.initial_data.url",
    ),
    ("POST", "/api/v1/jobs/image_pipeline", '{"initial_data": {"k%s": 1}}', "$.initial_data"),
    ("POST", "/api/v1/jobs/image_pipeline", '{"x%s": 1}', "$"),
    ("POST", "/_worker/workers/register", '{"worker_type": "%s"}', "$.worker_type"),
    ("POST", "/_worker/workers/register", '{"capabilities": {"gpu": "%s"}}', "$.capabilities.gpu"),
    ("PATCH", "/_worker/workers/w-solo", '{"current_tasks": ["%s"]}', "$.current_tasks[0]"),
    ("POST", "/_worker/tasks/result", '{"job_id": "%s", "task_id": "t"}', "$.job_id"),
    ("POST", "/api/v1/jobs/abc/approval", '{"decision": "approve", "n%s": 1}', "$"),
]


@pytest.mark.parametrize(("method", "path", "template", "field"), CASES)
async def test_a_lone_surrogate_anywhere_is_a_400_naming_the_field(
    api: Client, method: str, path: str, template: str, field: str
) -> None:
    headers = {**JSON, **(ACME if path.startswith("/api") else worker())}
    if path.startswith("/_worker/workers/w-solo"):
        await register(api, ["fetch_image"])
    response = await api.request(method, path, data=template % LONE, headers=headers)
    error = await error_of(response, 400)
    assert error["code"] == "invalid_value"
    assert error["details"][0]["path"] == field
    assert "surrogate" in error["message"]


@pytest.mark.parametrize("depth", [101, 1000, 1005, 1010, 5000])
async def test_deep_nesting_is_a_400(api: Client, depth: int) -> None:
    nested = "[" * depth + "]" * depth
    body = f'{{"initial_data": {{"deep": {nested}}}}}'
    response = await api.post("/api/v1/jobs/image_pipeline", data=body, headers={**ACME, **JSON})
    error = await error_of(response, 400)
    assert "nested" in error["message"]


@pytest.mark.parametrize("number", ["1e400", "-1e400"])
async def test_a_number_beyond_a_double_is_a_400_not_null(api: Client, number: str) -> None:
    body = f'{{"initial_data": {{"url": "x", "n": {number}}}}}'
    response = await api.post("/api/v1/jobs/image_pipeline", data=body, headers={**ACME, **JSON})
    error = await error_of(response, 400)
    assert error["details"][0]["path"] == "$.initial_data.n"


def test_the_sdk_refuses_an_undecodable_file_name_at_once() -> None:
    name = os.fsdecode(b"report-\xff.pdf")
    with pytest.raises(PermanentError, match="not valid UTF-8"):
        from_return({"file": name})


def test_the_sdk_refuses_a_result_too_deep_for_the_orchestrator() -> None:
    deep: list[object] = []
    for _ in range(5000):
        deep = [deep]
    with pytest.raises(PermanentError, match="nested"):
        from_return({"deep": deep})
    shallow: list[object] = []
    for _ in range(50):
        shallow = [shallow]
    assert from_return({"ok": shallow}).data == {"ok": shallow}


def test_an_error_naming_an_undecodable_file_still_encodes() -> None:
    error = sdk_error_of(FileNotFoundError(os.fsdecode(b"/tmp/in-\xff.bin")))
    error["message"].encode()  # raises if a lone surrogate is left
    assert "in-" in error["message"]
