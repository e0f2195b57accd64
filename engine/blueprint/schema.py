"""Checking blueprint data against schemas/blueprint.schema.json, with readable messages.

jsonschema collects every violation; this module turns each into one `Problem` placed at
the offending key or value, in words a blueprint author can act on.
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Iterator
from functools import cache
from importlib import resources
from typing import Any

import referencing.exceptions
from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError

from engine.blueprint.yamlsource import Path, Source
from engine.durations import parse_duration
from engine.errors import Problem

_JSON_TYPES = {
    dict: "a mapping",
    list: "a list",
    str: "a string",
    bool: "a boolean",
    int: "an integer",
    float: "a number",
    type(None): "null",
}
_TYPE_WORDS = {
    "object": "a mapping",
    "array": "a list",
    "string": "a string",
    "boolean": "a boolean",
    "integer": "an integer",
    "number": "a number",
    "null": "null",
}


@cache
def blueprint_schema() -> dict[str, Any]:
    """The blueprint JSON Schema shipped in the `schemas` package."""
    text = resources.files("schemas").joinpath("blueprint.schema.json").read_text("utf-8")
    schema: dict[str, Any] = json.loads(text)
    return schema


@cache
def _validator() -> Draft202012Validator:
    return Draft202012Validator(blueprint_schema())


def _describe(value: Any) -> str:
    kind = _JSON_TYPES.get(type(value), type(value).__name__)
    if isinstance(value, dict | list):
        return kind
    shown = json.dumps(value) if not isinstance(value, float) else repr(value)
    if len(shown) > 40:
        shown = shown[:37] + "..."
    return f"{kind} {shown}"


def did_you_mean(word: str, choices: list[str]) -> str:
    """`; did you mean 'x'?` for the closest choice, or an empty string."""
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


def schema_problems(source: Source, data: Any, skip: set[Path]) -> list[Problem]:
    """Every schema violation in `data`, except those at or below a path in `skip`."""
    problems: list[Problem] = []
    for error in _validator().iter_errors(data):
        path: Path = tuple(error.absolute_path)
        if any(path[: len(s)] == s for s in skip):
            continue
        for where, message, at_key in _translate(error, path, _at(data, path)):
            problems.append(source.problem(where, message, key=at_key))
    return problems


def _title(error: ValidationError) -> str | None:
    schema = error.schema
    return schema.get("title") if isinstance(schema, dict) else None


def _at(data: Any, path: Path) -> Any:
    for part in path:
        try:
            data = data[part]
        except (KeyError, IndexError, TypeError):
            return None
    return data


def _translate(error: ValidationError, path: Path, here: Any) -> Iterator[tuple[Path, str, bool]]:
    """(where, message, point at the key) for one error; `here` is the data at `path`."""
    keyword = error.validator
    instance: Any = error.instance
    value: Any = error.validator_value
    title = _title(error)
    if keyword == "additionalProperties" and isinstance(instance, dict):
        schema = error.schema if isinstance(error.schema, dict) else {}
        allowed = sorted(schema.get("properties", {}))
        for key in instance:
            if key not in allowed and key not in _pattern_keys(schema, key):
                within = f" in a {title}" if title else ""
                hint = did_you_mean(key, allowed) or (
                    f"; allowed: {', '.join(allowed)}" if allowed else ""
                )
                yield (*path, key), f"unknown field {key!r}{within}{hint}", True
        return
    if keyword == "required":
        missing = [name for name in value if name not in instance]
        for name in missing:
            within = f" in a {title}" if title else ""
            yield path, f"missing required field {name!r}{within}", False
        return
    if keyword == "type":
        names = [value] if isinstance(value, str) else list(value)
        words = " or ".join(_TYPE_WORDS.get(n, n) for n in names)
        yield path, f"expected {words}, got {_describe(instance)}", False
        return
    if title == "Duration":
        try:
            parse_duration(instance)
        except ValueError as exc:
            yield path, str(exc), False
            return
    if keyword == "pattern" and title:
        description = error.schema.get("description", "") if isinstance(error.schema, dict) else ""
        # A propertyNames error sits on the mapping; point at the offending key itself.
        is_key = isinstance(here, dict) and isinstance(instance, str) and instance in here
        where: Path = (*path, instance) if is_key else path
        yield where, f"{json.dumps(instance)} is not a valid {title.lower()}: {description}", is_key
        return
    if keyword == "enum":
        options = ", ".join(json.dumps(v) for v in value)
        plain = not isinstance(instance, dict | list)
        shown = json.dumps(instance) if plain else _describe(instance)
        yield path, f"{shown} is not allowed here; use one of {options}", False
        return
    if keyword in ("minProperties", "minItems", "minLength"):
        yield path, "must not be empty", False
        return
    if keyword == "oneOf" and path[-1:] == ("parallel",):
        yield (
            path,
            ("give either `branches` (named tasks) or `for_each` with `task`, not both"),
            False,
        )
        return
    yield path, error.message, False


def _pattern_keys(schema: dict[str, Any], key: str) -> list[str]:
    return [key for pattern in schema.get("patternProperties", {}) if re.search(pattern, key)]


def json_schema_problems(source: Source, path: Path, schema: Any) -> list[Problem]:
    """Problems that make `schema` (embedded at `path`) not a valid draft 2020-12 schema."""
    meta = Draft202012Validator(Draft202012Validator.META_SCHEMA)
    problems = []
    for error in meta.iter_errors(schema):
        where: Path = (*path, *error.absolute_path)
        problems.append(source.problem(where, f"not a valid JSON Schema: {error.message}"))
    if not problems:
        try:
            Draft202012Validator(schema).is_valid(None)
        except referencing.exceptions.Unresolvable as exc:
            problems.append(source.problem(path, f"not a usable JSON Schema: {exc}"))
    return problems
