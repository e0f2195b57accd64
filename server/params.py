"""Reading request bodies and query parameters, with a 400 that says what would be right."""

from __future__ import annotations

import asyncio
import math
import re
from collections.abc import Collection
from typing import Any

from aiohttp import web

from engine.jsonutil import JsonValueError, loads_strict
from server.errors import BadRequest, RequestTimeout, UnsupportedMediaType
from server.state import OFFLOAD, SETTINGS

ID = re.compile(r"^[A-Za-z0-9_-]{1,128}$")


def json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


async def json_object(request: web.Request, *, empty_ok: bool = False) -> dict[str, Any]:
    """The body as a JSON object. An oversized body raises aiohttp's 413 (rendered as JSON
    by the error middleware); a body sent as anything but JSON is a 415."""
    given = request.headers.get("Content-Type")
    if given is not None and request.body_exists and not is_json(request.content_type):
        raise UnsupportedMediaType(
            f"the request body is sent as {request.content_type[:100]!r}; send JSON with "
            "Content-Type: application/json",
            code="unsupported_media_type",
        )
    try:
        async with asyncio.timeout(request.app[SETTINGS].body_timeout_s):
            raw = await request.read()
    except TimeoutError:
        raise RequestTimeout(
            "the request body did not arrive in time (BODY_TIMEOUT)", code="request_timeout"
        ) from None
    if not raw.strip():
        if empty_ok:
            return {}
        raise BadRequest("the request body is empty; send a JSON object", code="invalid_json")
    try:  # (a large body is parsed on a thread: server/offload.py)
        value = await request.app[OFFLOAD].run(len(raw), lambda: loads_strict(raw))
    except JsonValueError as exc:
        raise BadRequest(
            f"the request body cannot be stored: {exc}",
            code="invalid_value",
            details=[{"path": exc.path, "message": exc.problem}],
        ) from None
    except (ValueError, RecursionError) as exc:
        message = str(exc) if not isinstance(exc, RecursionError) else "nested too deeply"
        raise BadRequest(
            f"the request body is not valid JSON: {message}", code="invalid_json"
        ) from None
    if not isinstance(value, dict):
        raise BadRequest(
            f"the request body must be a JSON object, not {json_type(value)}", code="invalid_body"
        )
    return value


def is_json(media_type: str) -> bool:
    """application/json, or a JSON-based type such as application/problem+json."""
    kind = media_type.strip().lower()
    return kind == "application/json" or (
        kind.startswith("application/") and kind.endswith("+json")
    )


def reject_unknown(body: dict[str, Any], allowed: Collection[str], what: str) -> None:
    unknown = sorted(set(body) - set(allowed))
    if unknown:
        names = ", ".join(repr(name) for name in unknown)
        raise BadRequest(
            f"unknown field(s) in {what}: {names}; allowed: {', '.join(sorted(allowed))}",
            code="unknown_fields",
            details={"unknown": unknown, "allowed": sorted(allowed)},
        )


def optional_str(body: dict[str, Any], name: str) -> str | None:
    value = body.get(name)
    if value is not None and not isinstance(value, str):
        raise BadRequest(f"{name!r} must be a string, not {json_type(value)}", code="invalid_field")
    return value


def required_str(body: dict[str, Any], name: str) -> str:
    value = optional_str(body, name)
    if not value:
        raise BadRequest(f"{name!r} is required: a non-empty string", code="invalid_field")
    return value


def query_number(
    request: web.Request, name: str, default: float, low: float, high: float, *, clamp: bool
) -> float:
    """A numeric query parameter in [low, high]; out of range is clamped or refused."""
    text = request.query.get(name)
    if text is None or text == "":
        return default
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if math.isnan(value) or (not clamp and not low <= value <= high):
        raise BadRequest(
            f"query parameter {name}={text!r} must be a number from {low:g} to {high:g}",
            code="invalid_query",
        )
    return min(max(value, low), high)


def query_int(request: web.Request, name: str, default: int, low: int, high: int) -> int:
    text = request.query.get(name)
    if text is None or text == "":
        return default
    try:
        value = int(text)
    except ValueError:
        value = low - 1
    if not low <= value <= high:
        raise BadRequest(
            f"query parameter {name}={text!r} must be a whole number from {low} to {high}",
            code="invalid_query",
        )
    return value
