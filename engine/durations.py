"""Durations as blueprints write them: `500ms`, `30s`, `5m`, `2h`, `1d`, or seconds."""

from __future__ import annotations

import math
import re
from datetime import timedelta

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
#: The longest duration datetime arithmetic can represent (999999999 days).
MAX_SECONDS = timedelta.max.days * 86400.0
_MAX_TEXT = f"{timedelta.max.days}d"
_HOW = "write a number with a unit (500ms, 30s, 5m, 2h, 1d) or a number of seconds"
_DURATION = re.compile(r"^([0-9]+(?:\.[0-9]+)?)(ms|s|m|h|d)$")


def parse_duration(value: object) -> float:
    """Seconds for a duration value; ValueError with a helpful message otherwise."""
    if isinstance(value, bool):
        raise ValueError(f"{str(value).lower()} is not a duration; {_HOW}")
    seconds: float | None = None
    try:
        if isinstance(value, int | float):
            if value < 0:
                raise ValueError(f"{_shown(value)} is negative; a duration is at least 0")
            seconds = float(value)
        elif isinstance(value, str):
            match = _DURATION.match(value)
            if match:
                seconds = float(match.group(1)) * _UNITS[match.group(2)]
    except OverflowError:
        seconds = math.inf
    if seconds is None or math.isnan(seconds):
        raise ValueError(f"{_shown(value)} is not a duration; {_HOW}")
    if seconds > MAX_SECONDS:
        raise ValueError(f"{_shown(value)} is too long; a duration is at most {_MAX_TEXT}")
    return seconds


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def format_duration(seconds: float) -> str:
    """The shortest exact blueprint spelling of `seconds` (for labels and messages)."""
    for unit in ("d", "h", "m", "s"):
        size = _UNITS[unit]
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    if seconds < 1:
        ms = seconds * 1000
        return f"{int(ms)}ms" if ms == int(ms) else f"{seconds:g}s"
    return f"{seconds:g}s"
