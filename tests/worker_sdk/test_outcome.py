"""What a handler's return value or exception becomes on the wire, without any network."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import pytest

from worker_sdk import (
    InvalidInputError,
    PermanentError,
    Result,
    TaskContext,
    TaskError,
    TransientError,
    Worker,
    WorkerError,
)
from worker_sdk.execution import Executor, Handler, make_skill

TASK = {"job_id": "j1", "task_id": "t1", "type": "work", "params": {"n": 1}}


async def run(
    handler: Handler,
    *,
    schema: dict[str, Any] | None = None,
    params: Any = None,
    tmp_path: Path = Path("/nonexistent"),
) -> dict[str, Any]:
    executor = Executor("w1", {"work": make_skill("work", handler, schema)}, None)
    task = {**TASK, "params": TASK["params"] if params is None else params}
    progress: list[tuple[float, str]] = []

    async def send(value: float, message: str) -> None:
        progress.append((value, message))

    context = TaskContext(task, "http://orch", tmp_path / "t1", send)
    return await executor.run(task, context)


async def test_a_dict_is_the_data_of_a_success() -> None:
    async def handler(params: dict[str, Any], ctx: TaskContext) -> dict[str, Any]:
        return {"doubled": params["n"] * 2, "task": ctx.task_id, "job": ctx.job_id}

    body = await run(handler)
    assert body["status"] == "success"
    assert body["data"] == {"doubled": 2, "task": "t1", "job": "j1"}
    assert (body["job_id"], body["task_id"], body["worker_id"]) == ("j1", "t1", "w1")
    assert "error" not in body
    assert body["costs"]["execution_time_seconds"] >= 0


async def test_none_is_an_empty_success() -> None:
    async def handler(params: dict[str, Any], ctx: TaskContext) -> None:
        return None

    body = await run(handler)
    assert (body["status"], body["data"]) == ("success", {})


async def test_a_result_carries_a_custom_status() -> None:
    async def handler(params: dict[str, Any], ctx: TaskContext) -> Result:
        return Result("out_of_stock", {"missing": ["sku-1"]})

    body = await run(handler)
    assert (body["status"], body["data"]) == ("out_of_stock", {"missing": ["sku-1"]})


@pytest.mark.parametrize(
    ("exc", "code"),
    [
        (TransientError("gateway busy", {"retry_in": 5}), "TRANSIENT_ERROR"),
        (PermanentError("card stolen"), "PERMANENT_ERROR"),
        (InvalidInputError("width must be positive", ["$.width"]), "INVALID_INPUT_ERROR"),
        (TaskError("declined by bank", code="CARD_DECLINED"), "CARD_DECLINED"),
    ],
)
async def test_each_documented_exception_has_its_code(exc: TaskError, code: str) -> None:
    async def handler(params: dict[str, Any], ctx: TaskContext) -> None:
        raise exc

    body = await run(handler)
    assert body["status"] == "failure"
    assert body["error"]["code"] == code
    assert body["error"]["message"] == exc.message
    assert body["error"].get("details") == exc.details
    assert "data" not in body


async def test_an_unexpected_exception_is_transient_with_its_text() -> None:
    def handler(params: dict[str, Any], ctx: TaskContext) -> None:
        raise KeyError("width")

    body = await run(handler)
    assert body["status"] == "failure"
    assert body["error"] == {"code": "TRANSIENT_ERROR", "message": "KeyError: 'width'"}


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ([1, 2], "returned list"),
        ("ok", "returned str"),
        ({"when": object()}, "not JSON"),
        ({"x": float("nan")}, "not JSON"),
    ],
)
async def test_a_value_that_cannot_be_sent_is_a_permanent_error(value: Any, fragment: str) -> None:
    async def handler(params: dict[str, Any], ctx: TaskContext) -> Any:
        return value

    body = await run(handler)
    assert body["error"]["code"] == "PERMANENT_ERROR"
    assert fragment in body["error"]["message"]


def test_result_refuses_reserved_and_empty_statuses() -> None:
    with pytest.raises(ValueError, match="reserved"):
        Result("failure")
    with pytest.raises(ValueError, match="non-empty"):
        Result("")
    with pytest.raises(ValueError, match="must be a dict"):
        Result("ok", [1])  # type: ignore[arg-type]


async def test_a_sync_handler_runs_in_a_thread() -> None:
    seen: list[str] = []

    def handler(params: dict[str, Any], ctx: TaskContext) -> dict[str, Any]:
        seen.append(threading.current_thread().name)
        return {"ok": True}

    body = await run(handler)
    assert body["data"] == {"ok": True}
    assert seen
    assert seen[0] != threading.main_thread().name


async def test_input_schema_lists_every_problem_as_invalid_input() -> None:
    schema = {
        "type": "object",
        "required": ["url", "width"],
        "properties": {"width": {"type": "integer", "minimum": 1}},
    }

    async def handler(params: dict[str, Any], ctx: TaskContext) -> None:
        raise AssertionError("the handler must not run")

    body = await run(handler, schema=schema, params={"width": 0})
    assert body["error"]["code"] == "INVALID_INPUT_ERROR"
    assert "input_schema of 'work'" in body["error"]["message"]
    assert body["error"]["details"] == [
        "$: 'url' is a required property",
        "$.width: 0 is less than the minimum of 1",
    ]


async def test_params_that_are_not_an_object_are_invalid_input() -> None:
    async def handler(params: dict[str, Any], ctx: TaskContext) -> None:
        return None

    body = await run(handler, params=[1, 2])
    assert body["error"]["code"] == "INVALID_INPUT_ERROR"


async def test_an_unknown_task_type_is_a_permanent_error() -> None:
    async def handler(params: dict[str, Any], ctx: TaskContext) -> None:
        return None

    executor = Executor("w1", {"work": make_skill("work", handler, None)}, None)

    async def send(value: float, message: str) -> None:
        return None

    task = {**TASK, "type": "other"}
    body = await executor.run(task, TaskContext(task, "http://orch", Path("/x"), send))
    assert body["error"]["code"] == "PERMANENT_ERROR"
    assert "Unsupported skill: 'other'" in body["error"]["message"]


def test_declarations_are_checked() -> None:
    worker = Worker()

    async def handler(params: dict[str, Any], ctx: TaskContext) -> None:
        return None

    worker.task("ok")(handler)
    with pytest.raises(WorkerError, match="declared twice"):
        worker.task("ok")(handler)
    with pytest.raises(WorkerError, match="skill name 'bad name'"):
        worker.task("bad name")(handler)
    with pytest.raises(WorkerError, match="input_schema is not a valid JSON Schema"):
        worker.task("typed", input_schema={"type": "no-such-type"})(handler)


async def test_progress_is_checked_and_sent() -> None:
    sent: list[tuple[float, str]] = []

    async def send(value: float, message: str) -> None:
        sent.append((value, message))

    context = TaskContext(TASK, "http://orch", Path("/x"), send)
    await context.progress(0.4, "message")
    await context.progress(1)
    with pytest.raises(ValueError, match="from 0 to 1"):
        await context.progress(1.5)
    with pytest.raises(TypeError):
        await context.progress("half")  # type: ignore[arg-type]
    await asyncio.to_thread(context.progress_threadsafe, 0.7, "from a thread")
    for _ in range(100):
        if len(sent) == 3:
            break
        await asyncio.sleep(0.01)
    assert sent == [(0.4, "message"), (1.0, ""), (0.7, "from a thread")]
