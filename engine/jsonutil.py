"""JSON encoding in one place, so the codec can change without touching callers.

orjson does the work (it is several times faster than the stdlib, and JSON coding showed
up in the benchmark's profiles). Two cases go to the stdlib instead, so that values come
back exactly as they were sent: integers beyond 64 bits, which orjson cannot write and
would read back as floats, and dictionaries with keys orjson does not convert.
"""

from __future__ import annotations

import json
from typing import Any

import orjson

# A run of 19+ digits may be an integer beyond 64 bits: read such text with the stdlib.
# (Found by mapping every digit to 0 and searching for 19 zeros: two C-speed passes, where
# a regex took a millisecond on a 60 KB document.)
_DIGITS_TO_ZERO = bytes.maketrans(b"123456789", b"000000000")
_NINETEEN_DIGITS = b"0" * 19
_OPTIONS = orjson.OPT_NON_STR_KEYS


def dumps(value: Any) -> str:
    return dumpb(value).decode()


def dumpb(value: Any) -> bytes:
    """`dumps` as UTF-8 bytes (for HTTP bodies and Redis, which want bytes anyway)."""
    try:
        return orjson.dumps(value, option=_OPTIONS)
    except TypeError:  # an integer beyond 64 bits, or a key orjson does not convert
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


def loads(text: str | bytes) -> Any:
    if _long_digits(text):
        return json.loads(text)
    return orjson.loads(text)


def loads_strict(text: str | bytes) -> Any:
    """`loads` for input from outside: NaN and Infinity are refused (ValueError), since
    they would be stored and echoed back as invalid JSON, and so is any value `check_value`
    refuses (JsonValueError, naming the field).

    orjson reads first. It reads an integer beyond 64 bits as a float (of magnitude 2**63
    or more), so the walk that checks the values, which it needs anyway, watches for such a
    float, and only then is the text read again by the stdlib, exactly. (A separate pass
    over the text for long runs of digits cost more than orjson's own parse.)"""
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError:
        pass  # the stdlib says what is wrong in plainer words ("NaN is not valid JSON")
    else:
        if _checked(value, MAX_DEPTH):
            return value
    value = json.loads(text, parse_constant=_no_constants)
    check_value(value)
    return value


def _long_digits(text: str | bytes) -> bool:
    data = text.encode() if isinstance(text, str) else text
    return _NINETEEN_DIGITS in data.translate(_DIGITS_TO_ZERO)


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


#: Request bodies nest at most this deep: the stored job document wraps them a few levels
#: further, and every codec on the way (orjson writes 254 levels, Lua cjson 1000) must cope.
MAX_DEPTH = 100


class JsonValueError(ValueError):
    """Parsed JSON that must not be stored; `path` names the field (`$.initial_data.a`)."""

    def __init__(self, path: str, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path = path
        self.problem = problem


def check_value(value: Any, max_depth: int = MAX_DEPTH) -> None:
    """Raise JsonValueError for what JSON text may carry but the store cannot keep as it
    was sent: lone surrogates (`"\\ud800"`) in strings or keys, numbers too large for a
    double (`1e400`, read as infinity, written back as null), and nesting deeper than
    `max_depth`. Iterative, linear in the size of `value`."""
    if _scan(value, max_depth, stop_at_large=False) is not _FINE:
        _raise_problem(value, max_depth)


# orjson reads an integer outside [-2**63, 2**64) as a float; a float this large may be one.
_LARGE = float(2**63)
_INF = float("inf")
_FINE, _LARGE_FLOAT, _PROBLEM = "fine", "large float", "problem"


def _checked(value: Any, max_depth: int) -> bool:
    """`check_value`, except that it answers False, raising nothing, if it meets a float
    of magnitude 2**63 or more first (the text is then read again by the stdlib, and
    checked then)."""
    found = _scan(value, max_depth, stop_at_large=True)
    if found is _PROBLEM:
        _raise_problem(value, max_depth)
    return found is _FINE


def _scan(value: Any, max_depth: int, *, stop_at_large: bool) -> str:
    """What check_value looks for, found without saying where: a walk one level at a time
    that builds no paths, so it costs little more than visiting each value. Stops at the
    first problem, or (`stop_at_large`) large float."""
    level = [value]
    depth = 0
    while level:
        deeper: list[Any] = []
        for item in level:
            if isinstance(item, str):
                if not _encodable(item):
                    return _PROBLEM
            elif isinstance(item, float):
                if stop_at_large and not -_LARGE < item < _LARGE:
                    return _LARGE_FLOAT
                if item != item or item in (_INF, -_INF):
                    return _PROBLEM
            elif isinstance(item, dict | list):
                if depth >= max_depth:
                    return _PROBLEM
                if isinstance(item, list):
                    deeper += item
                else:
                    deeper += item.values()
                    deeper += (key for key in item if isinstance(key, str))
        level = deeper
        depth += 1
    return _FINE


def _raise_problem(value: Any, max_depth: int) -> None:
    """Raise JsonValueError for a problem of `value` (`_scan` found one), naming where."""
    stack: list[tuple[Any, str, int]] = [(value, "$", 0)]
    while stack:
        item, path, depth = stack.pop()
        if isinstance(item, str):
            if not _encodable(item):
                raise JsonValueError(path, "a string holds a lone surrogate (e.g. \\ud800)")
        elif isinstance(item, float):
            if item != item or item in (_INF, -_INF):
                raise JsonValueError(path, "a number is out of the range of a double")
        elif isinstance(item, dict | list):
            if depth >= max_depth:
                raise JsonValueError(path, f"nested deeper than {max_depth} levels")
            if isinstance(item, list):
                stack.extend((v, f"{path}[{i}]", depth + 1) for i, v in enumerate(item))
                continue
            for key, v in item.items():
                if isinstance(key, str) and not _encodable(key):
                    raise JsonValueError(path, "a key holds a lone surrogate (e.g. \\ud800)")
                stack.append((v, f"{path}.{_path_key(key)}", depth + 1))


def _encodable(text: str) -> bool:
    if text.isascii():
        return True
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def _path_key(key: Any) -> str:
    text = str(key)
    return text if len(text) <= 64 else text[:61] + "..."
