"""Job labels: what a submission may carry (`labels`), and the `label=` filter of a listing.

A label is a name and a value, both short strings. The name cannot hold `:` (the filter
`label=customer:42` splits at the first one) nor `=` (the index key joins name and value
with it, see engine/store/keys.py); the value may hold anything printable. Each label costs
an index entry in Redis for as long as its job is kept, so there are few, and small.
"""

from __future__ import annotations

import re
from typing import Any

from aiohttp import web

from server.errors import BadRequest
from server.params import json_type

MAX_LABELS = 16  # labels per job
MAX_VALUE = 128  # characters in a value
MAX_FILTERS = 4  # label= parameters in one listing
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-/]{0,62}$")
NAME_RULE = "1 to 63 letters, digits, '_', '.', '-' or '/', starting with a letter or digit"
_PRINTABLE = re.compile(r"^[^\x00-\x1f\x7f]*$")


def value_problem(value: Any) -> str | None:
    """What is wrong with a label's value, or None."""
    if not isinstance(value, str):
        return f"must be a string, not {json_type(value)}"
    if not 1 <= len(value) <= MAX_VALUE:
        return f"must be 1 to {MAX_VALUE} characters, not {len(value)}"
    if not _PRINTABLE.match(value):
        return "must not hold control characters"
    return None


def parse_labels(value: Any, problems: list[dict[str, str]]) -> dict[str, str] | None:
    """The submission's `labels`, or None; each mistake is added to `problems` with the
    path of the field at fault (`$.labels`, `$.labels.<name>`)."""
    if value is None:
        return None
    if not isinstance(value, dict):
        message = f"must be an object of name: value strings, not {json_type(value)}"
        problems.append({"path": "$.labels", "message": message})
        return None
    if len(value) > MAX_LABELS:
        message = f"has {len(value)} labels; at most {MAX_LABELS} are allowed"
        problems.append({"path": "$.labels", "message": message})
        return None
    found = len(problems)
    for name, given in value.items():
        shown = name if len(name) <= 64 else name[:61] + "..."
        if not NAME.match(name):
            message = f"label name {shown!r} must be {NAME_RULE}"
            problems.append({"path": "$.labels", "message": message})
            continue
        problem = value_problem(given)
        if problem is not None:
            problems.append({"path": f"$.labels.{name}", "message": problem})
    return dict(value) if len(problems) == found and value else None


def query_labels(request: web.Request) -> list[tuple[str, str]]:
    """The listing's `label=name:value` filters, in order; a 400 names a bad one."""
    filters = request.query.getall("label", [])
    if len(filters) > MAX_FILTERS:
        raise BadRequest(
            f"at most {MAX_FILTERS} label= parameters are allowed, not {len(filters)}",
            code="invalid_query",
        )
    labels: list[tuple[str, str]] = []
    for raw in filters:
        name, sep, value = raw.partition(":")
        problem = value_problem(value) if sep else "must be name:value, e.g. customer:42"
        if problem is None and not NAME.match(name):
            problem = f"names a label {name[:64]!r} that is not {NAME_RULE}"
        if problem is not None:
            raise BadRequest(
                f"query parameter label={raw[:80]!r} {problem}",
                code="invalid_query",
                details={"parameter": "label"},
            )
        labels.append((name, value))
    return labels
