"""Checking blueprint data against schemas/blueprint.schema.json, with readable messages.

jsonschema collects every violation; this module turns each into one `Problem` placed at
the offending key or value, in words a blueprint author can act on.
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Iterable, Iterator
from functools import cache
from importlib import resources
from typing import Any

import referencing.exceptions
from jsonschema import Draft202012Validator, FormatChecker
from jsonschema.exceptions import ValidationError

from engine.blueprint.safe_schema import SafeValidator, pattern_warnings
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


#: Custom format of `$defs/duration`: the value `parse_duration` accepts (the JSON Schema
#: cannot bound a duration written with a unit).
DURATION_FORMAT = "interlock-duration"


def _is_duration(value: object) -> bool:
    if not isinstance(value, str | int | float):
        return True  # the type is checked separately
    try:
        parse_duration(value)
    except ValueError:
        return False
    return True


@cache
def _validator() -> Draft202012Validator:
    checker = FormatChecker(formats=())
    checker.checks(DURATION_FORMAT)(_is_duration)
    return Draft202012Validator(blueprint_schema(), format_checker=checker)


def describe_type(value: Any) -> str:
    """The JSON type of `value` in words: "a mapping", "a string", "null" ..."""
    return _JSON_TYPES.get(type(value), type(value).__name__)


def _describe(value: Any) -> str:
    kind = describe_type(value)
    if value is None or isinstance(value, dict | list):
        return kind
    shown = json.dumps(value) if not isinstance(value, float) else repr(value)
    if len(shown) > 40:
        shown = shown[:37] + "..."
    return f"{kind} {shown}"


def _shown(value: Any) -> str:
    """A scalar as JSON (`"x"`, `3`, `null`); a mapping or list by its type."""
    if isinstance(value, dict | list):
        return _describe(value)
    shown = json.dumps(value)
    return shown if len(shown) <= 40 else shown[:37] + "..."


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """`; did you mean 'x'?` for the closest choice, or an empty string."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


def schema_problems(source: Source, data: Any, skip: set[Path]) -> list[Problem]:
    """Every schema violation in `data`, except those at or below a path in `skip`.

    Each problem is reported once, even when several parts of the schema find it."""
    problems: dict[tuple[Path, str], Problem] = {}
    for error in _validator().iter_errors(data):
        path: Path = tuple(error.absolute_path)
        if any(path[: len(s)] == s for s in skip):
            continue
        for where, message, at_key in _translate(error, path, _at(data, path)):
            problems.setdefault((where, message), source.problem(where, message, key=at_key))
    return list(problems.values())


def _title(error: ValidationError) -> str | None:
    schema = error.schema
    title = schema.get("title") if isinstance(schema, dict) else None
    return title if isinstance(title, str) else None


def _words(title: str) -> str:
    """A title as running text: "Task transitions" -> "task transitions", "API endpoint"
    keeps its acronym."""
    return " ".join(w if w.isupper() else w[:1].lower() + w[1:] for w in title.split())


def _within(title: str | None, path: Path) -> str:
    """` in a task state`, ` in task transitions`; nothing at the top level, where the
    message already speaks of the blueprint itself."""
    if not title or not path:
        return ""
    words = _words(title)
    if words.endswith("s"):
        return f" in {words}"
    article = "an" if words[:1] in ("a", "e", "i", "o", "u") else "a"
    return f" in {article} {words}"


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
        # Keys a pattern allows, shown as what they look like (`error:<CODE>`).
        shapes = [f"{p[1:].split(':')[0]}:<CODE>" for p in schema.get("patternProperties", {})]
        for key in instance:
            if key not in allowed and key not in _pattern_keys(schema, key):
                hint = did_you_mean(key, allowed) or (
                    f"; allowed: {', '.join([*allowed, *shapes])}" if allowed else ""
                )
                yield (*path, key), f"unknown field {key!r}{_within(title, path)}{hint}", True
        return
    if keyword == "required" and isinstance(instance, dict):
        for name in value:
            if name not in instance:
                yield path, f"missing required field {name!r}{_within(title, path)}", False
        return
    if keyword == "type":
        names = [value] if isinstance(value, str) else list(value)
        words = " or ".join(_TYPE_WORDS.get(n, n) for n in names)
        yield path, f"expected {words}, got {_describe(instance)}", False
        return
    if keyword == "anyOf" and title == "Wait":
        yield from _wait_problems(error, path)
        return
    if keyword == "oneOf" and path[-1:] == ("parallel",) and isinstance(instance, dict):
        yield from _parallel_problems(path, instance)
        return
    if (
        keyword == "oneOf"
        and path[-3:-1] == ("parallel", "branches")
        and isinstance(instance, dict)
    ):
        yield from _runs_problems(path, instance, "the branch")
        return
    if title == "Duration":
        try:
            parse_duration(instance)
        except ValueError as exc:
            yield path, str(exc), False
            return
    if keyword == "pattern" and title:
        description = _first_sentence(error.schema)
        # A propertyNames error sits on the mapping; point at the offending key itself.
        is_key = isinstance(here, dict) and isinstance(instance, str) and instance in here
        where: Path = (*path, instance) if is_key else path
        message = f"{json.dumps(instance)} is not a valid {_words(title)}"
        yield where, f"{message}: {description}" if description else message, is_key
        return
    if keyword == "enum":
        options = ", ".join(json.dumps(v) for v in value)
        yield path, f"{_shown(instance)} is not allowed here; use one of {options}", False
        return
    if keyword in ("minProperties", "minItems", "minLength"):
        yield path, "must not be empty", False
        return
    if keyword == "uniqueItems" and isinstance(instance, list):
        seen: list[Any] = []
        for i, item in enumerate(instance):
            if item in seen:
                yield (*path, i), f"{_shown(item)} is already listed; remove it", False
                return
            seen.append(item)
    if keyword in ("minimum", "maximum") and isinstance(instance, int | float):
        bound = "at least" if keyword == "minimum" else "at most"
        yield path, f"must be {bound} {json.dumps(value)}, not {_shown(instance)}", False
        return
    yield path, error.message, False


def _first_sentence(schema: Any) -> str:
    """The first sentence of a schema's description (the rule; the rest is background)."""
    description = schema.get("description") if isinstance(schema, dict) else None
    if not isinstance(description, str):
        return ""
    return re.split(r"\.\s+(?=[A-Z`])", description.strip(), maxsplit=1)[0].rstrip(".")


def _wait_problems(error: ValidationError, path: Path) -> Iterator[tuple[Path, str, bool]]:
    """`wait:` is a duration or `{until: ...}`: explain the one the value looks like."""
    instance: Any = error.instance
    if isinstance(instance, dict):
        found = False
        for sub in error.context or ():
            if sub.relative_schema_path and sub.relative_schema_path[0] == 1:
                sub_path: Path = tuple(sub.absolute_path)
                here = _at(instance, sub_path[len(path) :])
                for problem in _translate(sub, sub_path, here):
                    found = True
                    yield problem
        if not found:
            yield path, "expected a duration or {until: <ISO 8601 date-time>}", False
        return
    if isinstance(instance, str | int | float) and not isinstance(instance, bool):
        try:
            parse_duration(instance)
        except ValueError as exc:
            yield path, str(exc), False
            return
    yield (
        path,
        "expected a duration (such as 30s or 5m) or {until: <ISO 8601 date-time>}, "
        f"got {_describe(instance)}",
        False,
    )


def _parallel_problems(path: Path, spec: dict[str, Any]) -> Iterator[tuple[Path, str, bool]]:
    """Why a `parallel:` mapping is neither a set of `branches` nor a `for_each` fan-out."""
    if "branches" in spec and "for_each" in spec:
        yield path, _BOTH, False
        return
    if "branches" in spec:
        misplaced = [key for key in _WITH_BRANCHES if key in spec]
        for key in misplaced:
            yield (*path, key), _WITH_BRANCHES[key], True
        if misplaced:
            return
    elif "for_each" in spec:
        yield from _runs_problems(path, spec, "each item of `for_each`")
        return
    elif "task" in spec:
        yield path, "missing required field 'for_each' (the list to run `task` for)", False
        return
    yield path, "give `branches` (named tasks) or `for_each` with `task`", False


def _runs_problems(path: Path, spec: dict[str, Any], what: str) -> Iterator[tuple[Path, str, bool]]:
    """Why a branch (or a `for_each`) runs neither one task nor one subflow."""
    if "subflow" not in spec:
        yield (
            path,
            f"missing required field 'task' (what {what} runs: a `task` or a `subflow`)",
            False,
        )
        return
    misplaced = [key for key in _TASK_FIELDS if key in spec]
    for key in misplaced:
        message = (
            f"give {what} a `task` or a `subflow`, not both"
            if key == "task"
            else f"`{key}` goes with `task`, not with a subflow"
            + (" (give the child its data in `subflow.input`)" if key == "params" else "")
        )
        yield (*path, key), message, True
    if not misplaced:
        yield path, f"give {what} a `task` or a `subflow`", False


_TASK_FIELDS = ("task", "params", "priority", "retry", "timeouts", "output_schema")
_BOTH = "give either `branches` (named tasks) or `for_each` with `task`, not both"
_WITH_BRANCHES = {
    "task": "`task` goes with `for_each`; with `branches`, give each branch its own task",
    "params": "`params` goes with `for_each`; with `branches`, give each branch its own params",
    "max_concurrency": "`max_concurrency` only limits a `for_each` fan-out; "
    "with `branches` every branch runs at once, so remove it",
    "subflow": "`subflow` goes with `for_each`; with `branches`, give each branch its own subflow",
}


def _pattern_keys(schema: dict[str, Any], key: str) -> list[str]:
    return [key for pattern in schema.get("patternProperties", {}) if re.search(pattern, key)]


def json_schema_problems(source: Source, path: Path, schema: Any) -> list[Problem]:
    """Problems that make `schema` (embedded at `path`) not a valid draft 2020-12 schema."""
    # The format checker makes the meta-schema check `pattern`s as regular expressions.
    meta = Draft202012Validator(
        Draft202012Validator.META_SCHEMA, format_checker=Draft202012Validator.FORMAT_CHECKER
    )
    problems = []
    for error in meta.iter_errors(schema):
        where: Path = (*path, *error.absolute_path)
        problems.append(source.problem(where, f"not a valid JSON Schema: {error.message}"))
    if not problems:
        validator = SafeValidator(schema)
        try:
            # Probe one value of each JSON type: an unresolvable $ref, or a $ref cycle that
            # consumes no data (`{"$ref": "#"}`), fails here rather than on a job's data.
            probes: tuple[Any, ...] = (None, True, 0, "", [], {})
            for probe in probes:
                validator.is_valid(probe)
        except referencing.exceptions.Unresolvable as exc:
            problems.append(source.problem(path, f"not a usable JSON Schema: {exc}"))
        except re.error as exc:  # a pattern the meta-schema's regex check let through
            problems.append(source.problem(path, f"not a usable JSON Schema: bad pattern: {exc}"))
        except RecursionError:
            problems.append(
                source.problem(
                    path, "not a usable JSON Schema: its $ref refers back to itself without end"
                )
            )
    if not problems:  # (an invalid pattern has its error already)
        for where, message in pattern_warnings(schema):
            problems.append(source.problem((*path, *where), message, severity="warning"))
    return problems
