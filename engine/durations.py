"""Durations as blueprints write them: `500ms`, `30s`, `5m`, `2h`, `1d`, or seconds."""

from __future__ import annotations

import re

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION = re.compile(r"^([0-9]+(?:\.[0-9]+)?)(ms|s|m|h|d)$")


def parse_duration(value: object) -> float:
    """Seconds for a duration value; ValueError with a helpful message otherwise."""
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a duration")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError(f"{value!r} is negative; a duration is at least 0")
        return float(value)
    if isinstance(value, str):
        match = _DURATION.match(value.strip())
        if match:
            return float(match.group(1)) * _UNITS[match.group(2)]
    raise ValueError(
        f"{value!r} is not a duration; write a number with a unit "
        "(500ms, 30s, 5m, 2h, 1d) or a number of seconds"
    )


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
