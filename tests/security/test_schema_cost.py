"""Item 3: checking a client's data against `input_schema` costs time linear in the data,
so one request cannot stall the event loop for everyone else."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import jsonschema._utils
import pytest

from engine.blueprint.loader import load_blueprints, validate_paths
from engine.blueprint.safe_schema import SafeValidator, canonical
from engine.jsonutil import MAX_DEPTH
from server.app import build_app
from tests.server.conftest import make_settings, serve
from tests.server.helpers import ACME, error_of

BLUEPRINT = """\
blueprint: hostile_schema
version: 1
api_endpoint: jobs/hostile_schema
input_schema:
  type: object
  properties:
    name: {type: string, pattern: "^(a+)+$"}
    tags: {type: array, uniqueItems: true}
  patternProperties:
    "^(x+x+)+y$": {type: string}
  additionalProperties: {type: [string, array]}
start: done
states:
  done: {end: finished}
"""

EVIL = "a" * 40 + "!"  # 2^40 steps for a backtracking engine


def write(tmp_path: Path, text: str = BLUEPRINT) -> Path:
    folder = tmp_path / "blueprints"
    folder.mkdir(exist_ok=True)
    (folder / "hostile.yaml").write_text(text, encoding="utf-8")
    return folder


def no_backtracking(*_: Any) -> Any:
    raise AssertionError("a client's data reached Python's backtracking re")


async def test_a_redos_pattern_is_answered_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given the blueprint's patterns, which Python's re would take hours on
    api = await serve(build_app(make_settings(tmp_path, BLUEPRINTS_DIR=str(write(tmp_path)))))
    monkeypatch.setattr(re, "search", no_backtracking)
    try:
        for data, where in [
            ({"name": EVIL}, "$.name"),
            ({"x" * 40: 1}, "$." + "x" * 40),
        ]:
            # When a client sends a string made to make them backtrack
            body = {"initial_data": data}
            response = await api.post("/api/v1/jobs/hostile_schema", json=body, headers=ACME)
            # Then it gets its 400 (and the test's timeout was never near)
            error = await error_of(response, 400)
            assert [d["path"] for d in error["details"]] == [where], error
    finally:
        await api.close()


def test_unique_items_is_linear(monkeypatch: pytest.MonkeyPatch) -> None:
    comparisons = 0
    real = jsonschema._utils.equal

    def counting(one: Any, two: Any) -> bool:
        nonlocal comparisons
        comparisons += 1
        return bool(real(one, two))

    monkeypatch.setattr(jsonschema._utils, "equal", counting)
    validator = SafeValidator({"type": "array", "uniqueItems": True})
    items = [{"id": i, "tags": [i, str(i)]} for i in range(4000)]
    assert validator.is_valid(items)
    assert not validator.is_valid([*items, {"tags": [7, "7"], "id": 7}])
    assert comparisons == 0  # not the 8 million pairs of the stock check


@pytest.mark.parametrize(
    ("items", "unique"),
    [
        ([1, 1.0], False),
        ([1, True], True),
        ([0, False], True),
        ([{"a": 1, "b": 2}, {"b": 2, "a": 1}], False),
        ([[1], [True]], True),
        ([[1, [2]], [1, [2.0]]], False),
        (["1", 1], True),
        ([None, None], False),
        ([{"a": []}, {"a": {}}], True),
    ],
)
def test_unique_items_keeps_json_schema_equality(items: list[Any], unique: bool) -> None:
    assert SafeValidator({"uniqueItems": True}).is_valid(items) is unique
    assert jsonschema.Draft202012Validator({"uniqueItems": True}).is_valid(items) is unique


def test_canonical_handles_the_deepest_request() -> None:
    deep: list[Any] = []
    for _ in range(MAX_DEPTH):  # what a request body may carry
        deep = [deep]
    assert len({canonical(deep), canonical(deep)}) == 1


def test_validate_warns_about_backtracking_patterns(tmp_path: Path) -> None:
    text = BLUEPRINT.replace('"^(x+x+)+y$"', '"^(ab)\\\\1$"')
    blueprints, problems = validate_paths([write(tmp_path, text)])
    assert len(blueprints) == 1
    warnings = [str(p) for p in problems if p.severity == "warning"]
    assert any(
        "nests quantifiers" in w and "$.input_schema.properties.name.pattern" in w for w in warnings
    ), warnings
    assert any("RE2 cannot run" in w for w in warnings), warnings
    assert [p for p in problems if p.severity == "error"] == []
    # and the blueprint still loads: warnings do not stop a server
    assert load_blueprints([write(tmp_path, text)])
