"""Text-to-value conversions for the configuration; each raises ValueError saying what would
be right (the caller prefixes the variable's name)."""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

Mode = Literal["FAILOVER", "WATERFALL", "ROUND_ROBIN"]

WORKER_ID = re.compile(r"^[A-Za-z0-9_-]{1,128}$")
BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
MODES: dict[str, Mode] = {
    "FAILOVER": "FAILOVER",
    "WATERFALL": "WATERFALL",
    "ROUND_ROBIN": "ROUND_ROBIN",
}


def json_type(value: Any) -> str:
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean"}
    if value is None:
        return "null"
    for kind, label in names.items():
        if isinstance(value, kind):
            return label
    return "a number"


def non_empty(text: str) -> str:
    if not text.strip():
        raise ValueError("must not be empty")
    return text.strip()


def worker_id(text: str) -> str:
    if not WORKER_ID.match(text):
        raise ValueError(f"{text[:140]!r} is not a worker id; use 1 to 128 letters, digits, _ or -")
    return text


def mode(text: str) -> Mode:
    mode = MODES.get(text.strip().upper())
    if mode is None:
        raise ValueError(
            f"{text!r} is not a mode; use FAILOVER (the default), WATERFALL or ROUND_ROBIN"
        )
    return mode


def int_between(low: int, high: int) -> Callable[[str], int]:
    def convert(text: str) -> int:
        try:
            number = int(text)
        except ValueError:
            raise ValueError(f"{text!r} is not a whole number; use {low} to {high}") from None
        if not low <= number <= high:
            raise ValueError(f"{number} is out of range; use {low} to {high}")
        return number

    return convert


def seconds(low: float, high: float) -> Callable[[str], float]:
    def convert(text: str) -> float:
        try:
            seconds = float(text)
        except ValueError:
            raise ValueError(f"{text!r} is not a number of seconds; use e.g. 5 or 0.5") from None
        if not math.isfinite(seconds) or not low <= seconds <= high:
            raise ValueError(f"{text} is out of range; use {low:g} to {high:g} seconds")
        return seconds

    return convert


def url(text: str) -> str:
    """An http(s) base URL without a trailing slash; ws(s):// is read as http(s)://."""
    try:
        parts = urlsplit(text)
        host = parts.hostname
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError as exc:
        raise ValueError(f"{text!r} is not a URL ({exc}); use e.g. http://host:8080") from None
    scheme = {"ws": "http", "wss": "https"}.get(parts.scheme.lower(), parts.scheme.lower())
    if scheme not in ("http", "https") or not host:
        raise ValueError(f"{text!r} is not an http(s) URL with a host; use e.g. http://host:8080")
    if parts.query or parts.fragment:
        raise ValueError(f"{text!r} has a query or fragment; give the base URL only")
    return urlunsplit((scheme, parts.netloc, parts.path.rstrip("/"), "", ""))


def bucket(text: str) -> str:
    if not BUCKET.match(text):
        raise ValueError(
            f"{text!r} is not a bucket name; use 3 to 63 lowercase letters, digits, . or -"
        )
    return text


def directory(text: str) -> Path:
    path = Path(text).expanduser()
    if not path.is_absolute():
        raise ValueError(f"{text!r} is not an absolute path; use e.g. /var/lib/worker/payloads")
    path = path.resolve()  # symlinks resolved once, so containment checks compare like with like
    if path.exists() and not path.is_dir():
        raise ValueError(f"{path} exists and is not a directory")
    return path
