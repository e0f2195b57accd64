"""The client's error tree.

ClientError
├── ApiError              the server answered with its JSON error (status, code, message,
│   │                     details); one subclass per status a client meets
│   ├── BadRequest (400), Unauthorized (401), Forbidden (403), NotFound (404),
│   ├── Conflict (409), PayloadTooLarge (413), ServiceUnavailable (503), ...
├── TransportError        the server could not be reached, or the connection broke
├── UnexpectedResponse    an answer that is not the API's JSON (a proxy's page, ...)
└── WaitTimeout           `wait`/`follow` reached their deadline before the job ended
"""

from __future__ import annotations

import json
from typing import Any

from interlock_client.models import Job


class ClientError(Exception):
    """Root of every error the client raises."""


class ApiError(ClientError):
    """An error answer of the API: `{"error": {"code", "message", "details"}}`."""

    def __init__(self, status: int, code: str, message: str, details: Any = None) -> None:
        super().__init__(f"{message} ({status} {code})")
        self.status = status
        self.code = code
        self.message = message
        self.details = details


class BadRequest(ApiError):
    """400: the request is malformed; `details` names each field at fault."""


class Unauthorized(ApiError):
    """401: the client token is missing or not valid."""


class Forbidden(ApiError):
    """403: the token may not do this."""


class NotFound(ApiError):
    """404: no such job (or another client's), blueprint or endpoint."""


class MethodNotAllowed(ApiError):
    """405: the path takes other methods."""


class RequestTimeout(ApiError):
    """408: the request body came too slowly."""


class Conflict(ApiError):
    """409: the job is not in a state that allows this (ended, not waiting, ...)."""


class PayloadTooLarge(ApiError):
    """413: the body is larger than the server allows."""


class UnsupportedMediaType(ApiError):
    """415: the body is not JSON."""


class ServerError(ApiError):
    """A 5xx other than 503: a fault of the server, not of the request."""


class ServiceUnavailable(ApiError):
    """503: the job store is down, or the server is shutting down; retry later."""


_BY_STATUS: dict[int, type[ApiError]] = {
    400: BadRequest,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    405: MethodNotAllowed,
    408: RequestTimeout,
    409: Conflict,
    413: PayloadTooLarge,
    415: UnsupportedMediaType,
    503: ServiceUnavailable,
}


class TransportError(ClientError):
    """The server could not be reached, or the connection broke or timed out."""

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(f"cannot reach {url}: {reason}")
        self.url = url
        self.reason = reason


class UnexpectedResponse(ClientError):
    """An answer that is not what the API sends (e.g. an HTML page from a proxy)."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(f"unexpected answer (HTTP {status}): {reason}")
        self.status = status
        self.reason = reason


class WaitTimeout(ClientError):
    """The deadline of `wait` or `follow` passed while the job had not ended; `job` is its
    last view."""

    def __init__(self, job: Job, timeout_s: float) -> None:
        super().__init__(f"job {job['id']} is still {job['status']} after {timeout_s:g} s")
        self.job = job
        self.timeout_s = timeout_s


def api_error(status: int, body: bytes) -> ClientError:
    """The exception for an error answer: the API's JSON error as an ApiError subclass, or
    UnexpectedResponse when the body is not one (another program answered)."""
    try:
        error = json.loads(body)["error"]
        code, message = error["code"], error["message"]
    except (ValueError, KeyError, TypeError):
        text = body[:200].decode("utf-8", "replace").strip()
        return UnexpectedResponse(status, text or "an empty body")
    if not isinstance(code, str) or not isinstance(message, str):
        return UnexpectedResponse(status, "an error without a code and a message")
    fallback = ServerError if status >= 500 else ApiError
    cls = _BY_STATUS.get(status, fallback)
    return cls(status, code, message, error.get("details"))
