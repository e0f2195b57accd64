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
from engine.expressions import MAX_STEPS, OverBudget, compile_expression
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


def test_a_state_past_the_budget_fails_the_job_naming_the_limit() -> None:
    expression = DOUBLING.replace("items", "initial_data.items", 1)
    blueprint = load_blueprint_text(BLUEPRINT.replace("EXPR", expression))
    job = RulesDriver(blueprint, {"items": [{"i": i} for i in range(1000)]})
    assert job.doc["status"] == "failed"
    error = job.doc["error"]
    assert (error["code"], error["state"]) == ("EXPRESSION_ERROR", "compose")
    assert "MAX_STEPS" in error["message"]
    assert f"{MAX_STEPS:,}" in error["message"]
