"""JSON Schema validation whose cost is linear in the data, for schemas that check what
clients send (`input_schema`) and what workers return (`output_schema`).

jsonschema as it comes runs `pattern`, `patternProperties` and `additionalProperties` with
Python's backtracking `re`: `^(a+)+$` against 28 `a` and a `!` takes seconds, and the
event loop stands still meanwhile. Its `uniqueItems` compares every pair of objects:
quadratic. `SafeValidator` is draft 2020-12 with those keywords replaced:
- regular expressions run on RE2 (google-re2), which is linear in the text. A pattern RE2
  cannot run (backreferences, lookaround) falls back to `re`; `interlock validate` warns
  about those (see `pattern_warnings`) and about patterns with nested quantifiers;
- `uniqueItems` hashes a canonical form of each item: linear.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Protocol

import re2  # type: ignore[import-untyped]  # google-re2 ships no type information
from jsonschema import Draft202012Validator, ValidationError, validators
from jsonschema._utils import extras_msg

#: RE2's memory budget for one compiled pattern (its own default is 8 MiB).
RE2_MAX_MEM = 8 << 20
MAX_CACHED = 1024


class Searcher(Protocol):
    def search(self, text: str) -> Any: ...


@functools.lru_cache(maxsize=MAX_CACHED)
def compiled(pattern: str) -> Searcher:
    """RE2 for `pattern`, or Python's re when RE2 cannot run it."""
    engine = linear(pattern)
    if engine is not None:
        return engine
    searcher: Searcher = re.compile(pattern)
    return searcher


@functools.lru_cache(maxsize=MAX_CACHED)
def linear(pattern: str) -> Searcher | None:
    """The pattern compiled by RE2, or None when RE2 refuses it."""
    options = re2.Options()
    options.log_errors = False  # a refusal is an answer here, not an error to print
    options.max_mem = RE2_MAX_MEM
    try:
        searcher: Searcher = re2.compile(pattern, options)
    except re2.error:
        return None
    return searcher


def search(pattern: str, text: str) -> bool:
    return compiled(pattern).search(text) is not None


# -- the keywords -----------------------------------------------------------------------------


def _pattern(
    validator: Any, pattern: str, instance: Any, schema: Mapping[str, Any]
) -> Iterator[ValidationError]:
    if validator.is_type(instance, "string") and not search(pattern, instance):
        yield ValidationError(f"{instance!r} does not match {pattern!r}")


def _pattern_properties(
    validator: Any, patterns: Mapping[str, Any], instance: Any, schema: Mapping[str, Any]
) -> Iterator[ValidationError]:
    if not validator.is_type(instance, "object"):
        return
    for pattern, subschema in patterns.items():
        for key, value in instance.items():
            if search(pattern, key):
                yield from validator.descend(value, subschema, path=key, schema_path=pattern)


def _extras(instance: Mapping[str, Any], schema: Mapping[str, Any]) -> list[str]:
    properties = schema.get("properties", {})
    patterns = list(schema.get("patternProperties", {}))
    return [
        key
        for key in instance
        if key not in properties and not any(search(p, key) for p in patterns)
    ]


def _additional_properties(
    validator: Any, additional: Any, instance: Any, schema: Mapping[str, Any]
) -> Iterator[ValidationError]:
    if not validator.is_type(instance, "object"):
        return
    extras = _extras(instance, schema)
    if validator.is_type(additional, "object"):
        for extra in extras:
            yield from validator.descend(instance[extra], additional, path=extra)
    elif not additional and extras:
        if "patternProperties" in schema:
            verb = "does" if len(extras) == 1 else "do"
            joined = ", ".join(repr(each) for each in sorted(extras))
            patterns = ", ".join(repr(each) for each in sorted(schema["patternProperties"]))
            yield ValidationError(f"{joined} {verb} not match any of the regexes: {patterns}")
        else:
            error = "Additional properties are not allowed (%s %s unexpected)"
            yield ValidationError(error % extras_msg(sorted(extras, key=str)))


def canonical(value: Any) -> Any:
    """A hashable form under which two JSON values are equal as JSON Schema says: 1 equals
    1.0, true does not equal 1, objects ignore key order. Built without recursion; request
    bodies are at most 100 levels deep (engine/jsonutil.py), so hashing it is bounded."""
    # Build bottom-up with an explicit stack: (value, done?) entries.
    out: list[Any] = []
    stack: list[tuple[Any, bool]] = [(value, False)]
    while stack:
        item, done = stack.pop()
        if isinstance(item, Mapping):
            if done:
                values = [out.pop() for _ in item][::-1]
                out.append(("o", frozenset(zip(item.keys(), values, strict=True))))
            else:
                stack.append((item, True))
                stack.extend((v, False) for v in reversed(list(item.values())))
        elif isinstance(item, Sequence) and not isinstance(item, str):
            if done:
                count = len(item)
                values = out[len(out) - count :] if count else []
                del out[len(out) - count :]
                out.append(("a", tuple(values)))
            else:
                stack.append((item, True))
                stack.extend((v, False) for v in reversed(item))
        elif isinstance(item, bool):
            out.append(("b", item))
        elif isinstance(item, int | float):
            out.append(("n", item))  # 1 == 1.0 and hash(1) == hash(1.0)
        else:
            out.append(("s", item))
    return out[0]


def _unique_items(
    validator: Any, unique: bool, instance: Any, schema: Mapping[str, Any]
) -> Iterator[ValidationError]:
    if not unique or not validator.is_type(instance, "array"):
        return
    seen: set[Any] = set()
    for item in instance:
        key = canonical(item)
        if key in seen:
            yield ValidationError(f"{instance!r:.200} has non-unique elements")
            return
        seen.add(key)


SafeValidator: Any = validators.extend(  # type: ignore[no-untyped-call]  # untyped upstream
    Draft202012Validator,
    {
        "pattern": _pattern,
        "patternProperties": _pattern_properties,
        "additionalProperties": _additional_properties,
        "uniqueItems": _unique_items,
    },
)


# -- what `interlock validate` warns about ----------------------------------------------------

# A group holding a quantifier, itself quantified: (a+)+, (a*b?)*, (?:x+){2,}, (a|aa)+ ...
_NESTED = re.compile(r"\((?:[^()\\]|\\.)*[+*}](?:[^()\\]|\\.)*\)[+*{]")


def pattern_warnings(schema: Any) -> list[tuple[tuple[str | int, ...], str]]:
    """(path inside the schema, message) for each pattern RE2 cannot run, or written with
    nested quantifiers (catastrophic for backtracking engines such as the worker SDK's)."""
    found: list[tuple[tuple[str | int, ...], str]] = []
    stack: list[tuple[Any, tuple[str | int, ...]]] = [(schema, ())]
    while stack:
        node, path = stack.pop()
        if isinstance(node, dict):
            patterns: list[tuple[tuple[str | int, ...], str]] = []
            if isinstance(node.get("pattern"), str):
                patterns.append(((*path, "pattern"), node["pattern"]))
            if isinstance(node.get("patternProperties"), dict):
                patterns += [
                    ((*path, "patternProperties", p), p) for p in node["patternProperties"]
                ]
            for where, pattern in patterns:
                message = _pattern_warning(pattern)
                if message is not None:
                    found.append((where, message))
            stack.extend(((v, (*path, k)) for k, v in node.items()))
        elif isinstance(node, list):
            stack.extend(((v, (*path, i)) for i, v in enumerate(node)))
    return sorted(found, key=lambda item: [str(p) for p in item[0]])


def _pattern_warning(pattern: str) -> str | None:
    if linear(pattern) is None:
        return (
            f"pattern {pattern!r} uses a feature RE2 cannot run (backreference, lookaround); "
            "it is checked with a backtracking engine, whose time can grow exponentially"
        )
    if _NESTED.search(pattern):
        return (
            f"pattern {pattern!r} nests quantifiers; the server checks it in linear time, but "
            "a backtracking engine (such as a worker's jsonschema) may take exponential time"
        )
    return None
