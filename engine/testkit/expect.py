"""A case's expectations against what its run did, as readable differences.

`status` and `path` and `output`/`error` compare exactly; `*_includes` compare as a JSON
subset (every key given must be there with that value, lists element by element); each
`assert` expression must hold; `attempts` counts the tasks dispatched per state. Each
failure is one message, with a unified diff where the values are large.
"""

from __future__ import annotations

import difflib
import json
from typing import Any

from engine.errors import ExpressionError
from engine.testkit.runner import Run
from engine.testkit.spec import Case


def check(case: Case, run: Run) -> list[str]:
    """Every expectation of `case` that `run` breaks, as messages (empty: it passed)."""
    expect = case.expect
    failures: list[str] = []
    if "status" in expect and expect["status"] != run.status:
        detail = (
            f" ({run.error['message']})"
            if isinstance(run.error, dict) and run.error.get("message")
            else ""
        )
        failures.append(f"status: expected {expect['status']!r}, got {run.status!r}{detail}")
    if "path" in expect and expect["path"] != run.path:
        failures.append("path differs:\n" + diff(expect["path"], run.path))
    for name, actual in (("output", run.output), ("error", run.error)):
        if name in expect and expect[name] != actual:
            failures.append(f"{name} differs:\n" + diff(expect[name], actual))
        if f"{name}_includes" in expect:
            missing = subset_differences(expect[f"{name}_includes"], actual, "$")
            if missing:
                lines = "\n".join(f"  {line}" for line in missing)
                failures.append(
                    f"{name} does not include what was expected:\n{lines}\n"
                    f"  {name} was: {_compact(actual)}"
                )
    attempts = expect.get("attempts") or {}
    for state, count in attempts.items():
        got = run.attempts.get(state, 0)
        if got != count:
            failures.append(f"attempts of {state!r}: expected {count}, got {got}")
    view = run.view()
    for expression in case.asserts:
        try:
            value = expression.search(view)
        except ExpressionError as exc:
            failures.append(f"assert {expression.source!r} failed to evaluate: {exc}")
            continue
        if value is None or value is False or value in ("", [], {}):
            failures.append(
                f"assert {expression.source!r} does not hold (it gave {_compact(value)})"
            )
    return failures


def subset_differences(expected: Any, actual: Any, where: str) -> list[str]:
    """Where `actual` fails to include `expected`, one line per difference."""
    if isinstance(expected, dict):
        if not isinstance(actual, dict):
            return [f"{where}: expected a mapping, got {_compact(actual)}"]
        found: list[str] = []
        for key, value in expected.items():
            if key not in actual:
                found.append(f"{where}.{key}: missing (expected {_compact(value)})")
            else:
                found.extend(subset_differences(value, actual[key], f"{where}.{key}"))
        return found
    if isinstance(expected, list):
        if not isinstance(actual, list) or len(actual) != len(expected):
            return [f"{where}: expected {_compact(expected)}, got {_compact(actual)}"]
        return [
            line
            for i, (e, a) in enumerate(zip(expected, actual, strict=True))
            for line in subset_differences(e, a, f"{where}[{i}]")
        ]
    if expected != actual or (
        type(expected) is not type(actual) and not _both_numbers(expected, actual)
    ):
        return [f"{where}: expected {_compact(expected)}, got {_compact(actual)}"]
    return []


def _both_numbers(a: Any, b: Any) -> bool:
    return all(isinstance(x, int | float) and not isinstance(x, bool) for x in (a, b))


def diff(expected: Any, actual: Any) -> str:
    """A unified diff of the two values as indented JSON (- expected, + actual)."""
    lines = difflib.unified_diff(
        _pretty(expected).splitlines(),
        _pretty(actual).splitlines(),
        "expected",
        "actual",
        lineterm="",
    )
    return "\n".join(f"  {line}" for line in lines)


def _pretty(value: Any) -> str:
    return json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False, default=str)


def _compact(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, ensure_ascii=False, default=str)
    return text if len(text) <= 200 else text[:197] + "..."
