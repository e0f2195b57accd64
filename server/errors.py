"""The server's error tree, and the middleware that renders every failure as JSON.

Every error response, ours or aiohttp's (unknown route, wrong method, oversized body), has
the same shape: `{"error": {"code": str, "message": str, "details": ...}}`. Workers built
with the RXON SDK read the raw body text of 4xx answers (protocol doc §6), so the messages
of worker errors are chosen with care: "Unauthorized: ..." and "... not found".
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import redis.exceptions
from aiohttp import web

from engine.errors import InterlockError
from engine.jsonutil import dumpb
from engine.store.client import StoreUnavailable

log = logging.getLogger("interlock.server")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class ServerError(InterlockError):
    """Root of every error the server package raises on purpose."""


class ConfigError(ServerError):
    """A setting, flag or config file is wrong; the message says where and what is right."""


class ApiError(ServerError):
    """An HTTP error answered as JSON. Subclasses fix the status and a default code."""

    status = 500
    default_code = "internal_error"

    def __init__(self, message: str, *, code: str | None = None, details: Any = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code or self.default_code
        self.details = details

    def response(self) -> web.Response:
        return error_response(self.status, self.code, self.message, self.details)


class BadRequest(ApiError):
    status = 400
    default_code = "bad_request"


class Unauthorized(ApiError):
    status = 401
    default_code = "unauthorized"


class Forbidden(ApiError):
    status = 403
    default_code = "forbidden"


class NotFound(ApiError):
    status = 404
    default_code = "not_found"


class MethodNotAllowed(ApiError):
    status = 405
    default_code = "method_not_allowed"


class RequestTimeout(ApiError):
    status = 408
    default_code = "request_timeout"

    def response(self) -> web.Response:
        response = super().response()
        response.force_close()  # the rest of the body is not worth waiting for
        return response


class Conflict(ApiError):
    status = 409
    default_code = "conflict"


class PayloadTooLarge(ApiError):
    status = 413
    default_code = "payload_too_large"


class UnsupportedMediaType(ApiError):
    status = 415
    default_code = "unsupported_media_type"


class ServiceUnavailable(ApiError):
    status = 503
    default_code = "store_unavailable"


def json_response(data: Any, *, status: int = 200) -> web.Response:
    """A JSON answer encoded by the engine's codec (compact, UTF-8)."""
    return web.Response(
        body=dumpb(data), status=status, content_type="application/json", charset="utf-8"
    )


def error_response(status: int, code: str, message: str, details: Any = None) -> web.Response:
    return json_response(
        {"error": {"code": code, "message": message, "details": details}}, status=status
    )


def _from_http_exception(request: web.Request, exc: web.HTTPException) -> web.Response:
    """aiohttp's own errors (routing, body size) in our JSON shape."""
    if isinstance(exc, web.HTTPNotFound):
        message = f"no route for {request.method} {request.path}"
        response = error_response(404, "not_found", message)
    elif isinstance(exc, web.HTTPMethodNotAllowed):
        allowed = sorted(exc.allowed_methods)
        message = f"{request.method} is not allowed on {request.path}; use {', '.join(allowed)}"
        response = error_response(405, "method_not_allowed", message, {"allowed": allowed})
        response.headers["Allow"] = ",".join(allowed)
    elif isinstance(exc, web.HTTPRequestEntityTooLarge):
        limit = request.client_max_size
        message = f"the request body is larger than the {limit} bytes allowed (MAX_BODY_BYTES)"
        response = error_response(413, "payload_too_large", message, {"max_bytes": limit})
    else:
        code = exc.reason.lower().replace(" ", "_").replace("-", "_") or "http_error"
        response = error_response(exc.status, code, exc.text or exc.reason)
    return response


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Turn every failure into a JSON error; unexpected ones into a logged, generic 500."""
    try:
        return await handler(request)
    except ApiError as exc:
        return exc.response()
    except web.HTTPException as exc:
        if exc.status < 400:
            raise  # redirects and other non-errors pass through untouched
        return _from_http_exception(request, exc)
    except (
        StoreUnavailable,
        redis.exceptions.ConnectionError,
        redis.exceptions.TimeoutError,
    ) as exc:
        # Some store calls let driver errors through untranslated; they mean the same thing.
        log.warning("%s %s: store unavailable: %s", request.method, request.path, exc)
        return error_response(503, "store_unavailable", "the job store is unavailable; retry later")
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("unexpected error in %s %s", request.method, request.path)
        return error_response(
            500, "internal_error", "internal server error; the details are in the server log"
        )
