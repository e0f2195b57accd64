"""Item 3: checking a client's data against `input_schema` costs time linear in the data,
so one request cannot stall the event loop for everyone else."""

from __future__ import annotations

import asyncio
import re
import threading
from pathlib import Path
from typing import Any

import jsonschema._utils
import pytest

from engine.blueprint.loader import load_blueprints, validate_paths
from engine.blueprint.safe_schema import SafeValidator, canonical
from engine.jsonutil import MAX_DEPTH
from server.app import build_app
from server.offload import Offload
from server.state import OFFLOAD
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


# -- large bodies are parsed and checked off the event loop (server/offload.py) -------------

BIG_TAGS = [{"id": i, "v": [i]} for i in range(8000)]  # about 190 KB


async def submit_tags(api: Any, tags: list[Any]) -> Any:
    body = {"initial_data": {"tags": tags}}
    return await api.post("/api/v1/jobs/hostile_schema", json=body, headers=ACME)


async def test_a_large_body_gets_the_same_answer_off_the_loop(tmp_path: Path) -> None:
    # The same invalid body, checked on the loop (threshold above it) and on a thread
    answers = []
    for threshold in (1 << 30, 0):
        app = build_app(make_settings(tmp_path, BLUEPRINTS_DIR=str(write(tmp_path))))
        app[OFFLOAD] = Offload(off_loop_bytes=threshold)
        api = await serve(app)
        try:
            error = await error_of(await submit_tags(api, [*BIG_TAGS, BIG_TAGS[5]]), 400)
            answers.append(error)
            response = await submit_tags(api, BIG_TAGS)
            assert response.status == 202, await response.text()
            # and a body too deep to store is refused alike (loads_strict's error)
            deep = "[" * 200 + "]" * 200
            response = await api.post(
                "/api/v1/jobs/hostile_schema",
                data=f'{{"initial_data": {{"d": {deep}, "pad": "{"x" * 70_000}"}}}}',
                headers={**ACME, "Content-Type": "application/json"},
            )
            answers.append(await error_of(response, 400))
        finally:
            await api.close()
    assert answers[:2] == answers[2:]
    assert answers[0]["details"][0]["path"] == "$.tags"


async def test_the_loop_answers_while_large_bodies_are_checked_two_at_a_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    api = await serve(build_app(make_settings(tmp_path, BLUEPRINTS_DIR=str(write(tmp_path)))))
    release = threading.Event()
    two = asyncio.Event()
    loop = asyncio.get_running_loop()
    lock = threading.Lock()
    running: list[str] = []
    most = 0
    real = SafeValidator.iter_errors

    def held(self: Any, instance: Any, *args: Any) -> Any:
        nonlocal most
        with lock:
            running.append(threading.current_thread().name)
            most = max(most, len(running))
            if len(running) == 2:
                loop.call_soon_threadsafe(two.set)
        release.wait(20)  # a check that takes as long as the test wants
        with lock:
            running.pop()
        return real(self, instance, *args)

    monkeypatch.setattr(SafeValidator, "iter_errors", held)
    try:
        # Given three large submissions whose checks do not end
        submits = [asyncio.create_task(submit_tags(api, BIG_TAGS)) for _ in range(3)]
        async with asyncio.timeout(20):
            await two.wait()
        # Then two are checked, on threads, and the loop still answers other requests
        assert all(name.startswith("interlock-check") for name in running), running
        response = await api.get("/api/v1/blueprints", headers=ACME)
        assert response.status == 200
        assert len(running) == 2
        # and once released, all three are accepted, never more than two at once
        release.set()
        for answer in await asyncio.gather(*submits):
            assert answer.status == 202, await answer.text()
        assert most == 2
    finally:
        release.set()
        await api.close()
