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
        check_json(result.data)
    except (TypeError, ValueError) as exc:
        raise PermanentError(f"the handler's result is not JSON: {exc}") from None
    return result


#: The orchestrator refuses request bodies nested deeper than 100 levels; a result's data
#: sits two levels inside its body.
MAX_DATA_DEPTH = 98


def check_json(value: Any) -> None:
    """Raise TypeError or ValueError unless the orchestrator can take `value` as it is:
    JSON types only, finite numbers, text that is valid UTF-8 (no lone surrogates, such
    as `os.fsdecode(b"report-\\xff.pdf")` makes), at most MAX_DATA_DEPTH levels deep."""
    try:
        text = json.dumps(value, allow_nan=False, default=_refuse, ensure_ascii=False)
    except RecursionError:
        raise ValueError("it is nested too deeply") from None
    try:
        text.encode()
    except UnicodeEncodeError as exc:
        raise ValueError(
            f"a string holds {text[exc.start : exc.end].encode('utf-8', 'backslashreplace')!r}"
            ", which is not valid UTF-8 (a lone surrogate, e.g. from os.fsdecode)"
        ) from None
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:  # iterative: a deep value must not overflow our own stack either
        item, depth = stack.pop()
        if isinstance(item, Mapping):
            children: Any = item.values()
        elif isinstance(item, list | tuple):
            children = item
        else:
            continue
        if depth > MAX_DATA_DEPTH:
            raise ValueError(f"it is nested more than {MAX_DATA_DEPTH} levels deep")
        stack.extend((child, depth + 1) for child in children)


def _refuse(value: Any) -> Any:
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def error_of(exc: BaseException) -> dict[str, Any]:
    """The `error` object reporting `exc`: its code for a TaskError, else TRANSIENT_ERROR."""
    if isinstance(exc, TaskError):
        error = exc.as_error()
        try:
            check_json(error)
        except (TypeError, ValueError):
            details = repr(error.get("details"))
            error["details"] = details.encode("utf-8", "backslashreplace").decode()
            message = str(error.get("message", ""))
            error["message"] = message.encode("utf-8", "backslashreplace").decode()
        return error
    text = str(exc) or type(exc).__name__
    # An OSError's text may hold a file name with undecodable bytes (lone surrogates).
    text = text.encode("utf-8", "backslashreplace").decode()
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
