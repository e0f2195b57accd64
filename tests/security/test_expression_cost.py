"""Item 3 (audit): what JMESPath costs over the largest request. A blueprint's expressions
are linear in the data but for `sort_by`-style sorts, except when the expression itself
multiplies its input (`[@, @][]` doubles it; repeated, it grows exponentially). Each search
is held to MAX_STEPS: past it, the job fails with EXPRESSION_ERROR naming the limit instead
of holding the event loop."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

import engine.expressions
from engine.blueprint.loader import load_blueprint_text
from engine.expressions import (
    MAX_RESULT_BYTES,
    MAX_STEPS,
    OverBudget,
    TooLarge,
    compile_expression,
)
from tests.support.rules_driver import RulesDriver

MAX_BODY = 1 << 20  # MAX_BODY_BYTES's default

# As much as the largest request body (1 MiB) holds of objects like these.
BIG = {"items": [{"i": i, "k": f"k{i}", "tags": ["a", "b"]} for i in range(21_000)]}
SMALLEST = {"items": [{"k": f"{i}"} for i in range(66_000)]}  # 1 MiB of small objects

DOUBLING = " | ".join(["items"] + ["[@, @][]"] * 30)  # a billion copies of each item


@pytest.mark.parametrize(
    "source",
    [
        "items[*].k",
        "items[?i > `5`].k",
        "sort_by(items, &k)[0].k",
        "max_by(items, &length(k)).k",
        "items[*].tags[]",
        "length(to_string(items))",
        "join(',', items[*].k)",
        "items[*].{a: i, b: k, c: [i, k]}",
    ],
)
def test_linear_expressions_over_the_largest_request_fit_the_budget(source: str) -> None:
    for data in (BIG, SMALLEST):
        assert 0.9 * MAX_BODY < len(json.dumps(data)) < MAX_BODY
        assert compile_expression(source).search(data) is not None


def test_an_expression_that_multiplies_its_input_stops_at_the_budget(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    visits = 0
    real = engine.expressions._BudgetedInterpreter.visit

    def counting(self: Any, node: Any, *args: Any, **kwargs: Any) -> Any:
        nonlocal visits
        visits += 1
        return real(self, node, *args, **kwargs)

    monkeypatch.setattr(engine.expressions._BudgetedInterpreter, "visit", counting)
    items = {"items": [{"i": i} for i in range(1000)]}
    with pytest.raises(OverBudget, match="MAX_STEPS") as caught:
        compile_expression(DOUBLING + " | [*].i").search(items)
    assert DOUBLING in str(caught.value)
    assert visits <= MAX_STEPS + 1  # it stopped there, not after 2^30 copies of each item
    # and the next search has its budget again
    assert compile_expression("items[0].i").search(items) == 0


def test_function_arguments_count_by_their_length() -> None:
    # `contains` over a 30,000-item list, once per item: one visit each, 900 million compares
    every = list(range(30_000))
    data = {"items": [{"all": every, "x": -1} for _ in range(30_000)]}
    started = time.perf_counter()
    with pytest.raises(OverBudget, match="MAX_STEPS"):
        compile_expression("items[?contains(all, x)]").search(data)
    assert time.perf_counter() - started < 30  # (stopped after ~66 items, not 30,000)


BLUEPRINT = """
blueprint: costly
start: compose
states:
  compose:
    set: {copies: "${ EXPR }"}
    next: done
  done: {end: finished}
"""


@pytest.mark.parametrize(
    ("source", "limit", "value"),
    [
        (DOUBLING, "MAX_STEPS", MAX_STEPS),
        (" | ".join(["items"] + ["[@, @]"] * 30), "MAX_RESULT_BYTES", MAX_RESULT_BYTES),
    ],
)
def test_a_state_past_a_limit_fails_the_job_naming_it(source: str, limit: str, value: int) -> None:
    expression = source.replace("items", "initial_data.items", 1)
    blueprint = load_blueprint_text(BLUEPRINT.replace("EXPR", expression))
    job = RulesDriver(blueprint, {"items": [{"i": i} for i in range(1000)]})
    assert job.doc["status"] == "failed"
    error = job.doc["error"]
    assert (error["code"], error["state"]) == ("EXPRESSION_ERROR", "compose")
    assert limit in error["message"]
    assert f"{value:,}" in error["message"]


# -- the size of what a search builds ----------------------------------------------------------

DOUBLING_COPIES = " | ".join(["items"] + ["[@, @]"] * 30)  # 2^30 copies, in 31 steps


def test_a_value_built_of_copies_stops_at_the_size_limit_in_a_few_steps() -> None:
    items = {"items": [{"i": i, "k": f"k{i}"} for i in range(1000)]}
    started = time.perf_counter()
    with pytest.raises(TooLarge, match="MAX_RESULT_BYTES") as caught:
        compile_expression(DOUBLING_COPIES).search(items)
    assert time.perf_counter() - started < 5  # (2^30 copies as JSON: tens of GiB)
    assert DOUBLING_COPIES in str(caught.value)
    assert f"{MAX_RESULT_BYTES:,}" in str(caught.value)
    # (and a function given such a value never runs: to_string would encode every copy)
    with pytest.raises(TooLarge):
        compile_expression(f"to_string({DOUBLING_COPIES})").search(items)
    # the next search measures afresh
    assert compile_expression("[items, items][1][0].i").search(items) == 0


@pytest.mark.parametrize(
    ("source", "copies"),
    [("[s, s]", 2), ("[s, s, s, s]", 4), ("{a: s, b: s, c: s}", 3), ("[[s, s], [s, s]]", 4)],
)
def test_a_built_value_is_counted_as_its_json_is_long(source: str, copies: int) -> None:
    # a string the size of the limit over the number of copies, less a little, fits...
    room = MAX_RESULT_BYTES // copies - 100
    built = compile_expression(source).search({"s": "x" * room})
    assert len(json.dumps(built, separators=(",", ":"))) <= MAX_RESULT_BYTES
    # ...and a little more than that does not
    with pytest.raises(TooLarge):
        compile_expression(source).search({"s": "x" * (room + 200)})


def test_a_value_only_read_is_not_measured(monkeypatch: pytest.MonkeyPatch) -> None:
    measured: list[Any] = []
    real = engine.expressions._BudgetedInterpreter.size

    def counting(self: Any, value: Any) -> int:
        measured.append(value)
        return int(real(self, value))

    monkeypatch.setattr(engine.expressions._BudgetedInterpreter, "size", counting)
    assert compile_expression("items[0].k").search(BIG) == "k0"
    assert compile_expression("items").search(BIG) is BIG["items"]
    assert measured == []  # nothing built: no walk of the 1 MiB of items
