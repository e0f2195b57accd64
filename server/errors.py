"""The server's error tree, and the middleware that renders every failure as JSON.

Every error response, ours or aiohttp's (unknown route, wrong method, oversized body), has
the same shape: `{"error": {"code": str, "message": str, "details": ...}}`. Workers built
with the RXON SDK read the raw body text of 4xx answers (protocol doc §6), so the messages
of worker errors are chosen with care: "Unauthorized: ..." and "... not found".
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import redis.exceptions
from aiohttp import web
from multidict import CIMultiDict

from engine.errors import InterlockError
from engine.jsonutil import dumpb
from engine.store.client import StoreUnavailable

log = logging.getLogger("interlock.server")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
#: What a request that no route matched must pass under an area's path prefix (a token)
#: before its 404 or 405, and the error it then gets (server/routing.py).
Unmatched = Callable[[web.Request, web.HTTPException], web.HTTPException]
AREAS: web.AppKey[dict[str, Unmatched]] = web.AppKey("areas")


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


#: Sent with every answer: no version to fingerprint, nothing for a browser to sniff,
#: frame, cache or pass on as a referrer (the API serves JSON and DOT, never pages).
#: server/app.py adds them to each answer that does not come with them.
SECURITY_HEADERS = {
    "Server": "Interlock",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": "default-src 'none'; frame-ancestors 'none'",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
_JSON_HEADERS = CIMultiDict({"Content-Type": "application/json; charset=utf-8", **SECURITY_HEADERS})


class JsonResponse(web.Response):
    """A JSON answer built with its headers, security headers included (copied from one
    prepared set rather than set one by one on every answer)."""


def json_response(data: Any, *, status: int = 200) -> web.Response:
    """A JSON answer encoded by the engine's codec (compact, UTF-8)."""
    return JsonResponse(body=dumpb(data), status=status, headers=_JSON_HEADERS)


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


def _unmatched(request: web.Request, exc: web.HTTPException) -> web.HTTPException:
    """The error for a path no route matched, once its area's check (if any) passed."""
    areas = request.app.get(AREAS)
    if areas:
        path = request.rel_url.raw_path
        for prefix, check in areas.items():
            if path == prefix or path.startswith(prefix + "/"):
                return check(request, exc)
    return exc


def error_answer(request: web.Request, exc: Exception) -> web.StreamResponse:
    """The JSON answer for a failure of `request`'s handler (called where it is caught);
    re-raises a redirect or other non-error HTTP exception untouched."""
    if isinstance(exc, ApiError):
        return exc.response()
    if isinstance(exc, web.HTTPException):
        if exc.status < 400:
            raise exc  # redirects and other non-errors pass through untouched
        if request.match_info.http_exception is exc:  # no route matched
            try:
                exc = _unmatched(request, exc)
            except ApiError as refused:
                return refused.response()
        return _from_http_exception(request, exc)
    if isinstance(
        exc, (StoreUnavailable, redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)
    ):
        # Some store calls let driver errors through untranslated; they mean the same thing.
        log.warning("%s %s: store unavailable: %s", request.method, request.path, exc)
        return error_response(503, "store_unavailable", "the job store is unavailable; retry later")
    log.error("unexpected error in %s %s", request.method, request.path, exc_info=exc)
    return error_response(
        500, "internal_error", "internal server error; the details are in the server log"
    )


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Turn every failure into a JSON error; unexpected ones into a logged, generic 500.
    (With metrics on, server/metrics.py's middleware does this itself: one layer less.)"""
    try:
        return await handler(request)
    except Exception as exc:  # (a cancellation is no Exception: it passes)
        return error_answer(request, exc)
