"""The SDK's error tree.

    WorkerError                      root of everything the SDK raises on purpose
    ├── ConfigError                  bad configuration, found at start-up
    └── TaskError                    raised by a handler: the task fails with `code`
        ├── TransientError           TRANSIENT_ERROR: worth retrying (the default)
        │   └── PayloadTransferError an S3 download or upload failed
        ├── PermanentError           PERMANENT_ERROR: retrying cannot help
        └── InvalidInputError        INVALID_INPUT_ERROR: the params are wrong

Any other exception a handler raises is reported as TRANSIENT_ERROR with its text.
"""

from __future__ import annotations

from typing import Any, ClassVar

TRANSIENT_ERROR = "TRANSIENT_ERROR"
PERMANENT_ERROR = "PERMANENT_ERROR"
INVALID_INPUT_ERROR = "INVALID_INPUT_ERROR"
# A result larger than the orchestrator takes (HTTP 413): reported instead of the result.
RESULT_TOO_LARGE = "RESULT_TOO_LARGE"


class WorkerError(Exception):
    """Root of every error the worker SDK raises on purpose."""


class ConfigError(WorkerError):
    """The configuration is unusable; the message names each variable at fault."""


class TaskError(WorkerError):
    """A task failure with an error code; raise a subclass, or this with `code=`."""

    default_code: ClassVar[str] = TRANSIENT_ERROR

    def __init__(self, message: str, details: Any = None, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details
        self.code = code or self.default_code

    def as_error(self) -> dict[str, Any]:
        """The `error` object of a failure result."""
        error: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.details is not None:
            error["details"] = self.details
        return error


class TransientError(TaskError):
    """Something that may work on another attempt: a timeout, a busy dependency."""

    default_code = TRANSIENT_ERROR


class PermanentError(TaskError):
    """Something no retry can fix: the job should fail (or take its `failure` transition)."""

    default_code = PERMANENT_ERROR


class InvalidInputError(TaskError):
    """The task's params are wrong: missing fields, wrong types, failed `input_schema`."""

    default_code = INVALID_INPUT_ERROR


class PayloadTransferError(TransientError):
    """An S3 download (params) or upload (result) failed."""
