"""What a handler's return value or exception becomes on the wire (protocol §4).

| the handler                                   | status        | data / error                  |
|-----------------------------------------------|---------------|-------------------------------|
| returns a dict (or None)                      | `success`     | data = the dict (`{}`)        |
| returns `Result("out_of_stock", {...})`       | `out_of_stock`| data = the dict               |
| raises `TransientError(msg, details)`         | `failure`     | `TRANSIENT_ERROR`             |
| raises `PermanentError(msg, details)`         | `failure`     | `PERMANENT_ERROR`             |
| raises `InvalidInputError(msg, details)`      | `failure`     | `INVALID_INPUT_ERROR`         |
| raises `TaskError(msg, code="X")`             | `failure`     | `X`                           |
| raises anything else                          | `failure`     | `TRANSIENT_ERROR`, its text   |
| returns another type, or data that is not JSON| `failure`     | `PERMANENT_ERROR`             |
| is cancelled by the orchestrator or shutdown  | `cancelled`   | -                             |
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from worker_sdk.errors import TRANSIENT_ERROR, PermanentError, TaskError

RESERVED_STATUSES = ("failure", "cancelled")


@dataclass(frozen=True, slots=True)
class Result:
    """A handler's answer with a status of its choice, for a blueprint transition such as
    `on: {out_of_stock: no_stock}`. A plain dict return is `Result("success", that dict)`."""

    status: str = "success"
    data: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.status, str) or not self.status.strip():
            raise ValueError("Result.status must be a non-empty string such as 'out_of_stock'")
        if self.status in RESERVED_STATUSES:
            raise ValueError(
                f"Result.status {self.status!r} is reserved; raise TransientError, "
                "PermanentError or InvalidInputError to report a failure"
            )
        if not isinstance(self.data, Mapping):
            raise ValueError(f"Result.data must be a dict, not {type(self.data).__name__}")


def from_return(value: Any) -> Result:
    """The Result for what a handler returned; PermanentError for a type we cannot send."""
    if isinstance(value, Result):
        result = value
    elif value is None:
        result = Result()
    elif isinstance(value, Mapping):
        result = Result("success", value)
    else:
        raise PermanentError(
            f"the handler returned {type(value).__name__}; return a dict, None, "
            "or Result(status, data)"
        )
    try:
        json.dumps(result.data, allow_nan=False, default=_refuse)
    except (TypeError, ValueError) as exc:
        raise PermanentError(f"the handler's result is not JSON: {exc}") from None
    return result


def _refuse(value: Any) -> Any:
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def error_of(exc: BaseException) -> dict[str, Any]:
    """The `error` object reporting `exc`: its code for a TaskError, else TRANSIENT_ERROR."""
    if isinstance(exc, TaskError):
        error = exc.as_error()
        try:
            json.dumps(error, allow_nan=False)
        except (TypeError, ValueError):
            error["details"] = repr(error.get("details"))
        return error
    text = str(exc) or type(exc).__name__
    return {"code": TRANSIENT_ERROR, "message": f"{type(exc).__name__}: {text}"[:2000]}


def result_body(
    task: Mapping[str, Any],
    worker_id: str,
    status: str,
    *,
    data: Mapping[str, Any] | None = None,
    error: Mapping[str, Any] | None = None,
    seconds: float | None = None,
) -> dict[str, Any]:
    """The JSON a `POST /_worker/tasks/result` carries; sent identically on every retry."""
    body: dict[str, Any] = {
        "job_id": task["job_id"],
        "task_id": task["task_id"],
        "worker_id": worker_id,
        "origin_worker_id": worker_id,
        "status": status,
    }
    if data is not None:
        body["data"] = dict(data)
    if error is not None:
        body["error"] = dict(error)
    if seconds is not None and math.isfinite(seconds):
        body["costs"] = {"execution_time_seconds": round(seconds, 6)}
    return body
