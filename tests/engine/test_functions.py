"""Interlock's expression functions (engine/functions.py): what each gives, what each refuses,
and how they behave inside the transition rules (a fake clock, a seeded random source)."""

from __future__ import annotations

import re
import uuid
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine import functions
from engine.errors import ExpressionError
from engine.expressions import compile_expression
from tests.engine.test_rules import bp
from tests.support.rules_driver import RulesDriver

ROOT = Path(__file__).resolve().parents[2]
DATA = {"a": 7, "b": 2, "f": 2.5, "s": "42", "name": "Ada", "list": [1, 2], "none": None}


def search(expression: str, data: Any = None) -> Any:
    return compile_expression(expression).search(DATA if data is None else data)


@pytest.mark.parametrize(
    ("expression", "value"),
    [
        ("add(a, b)", 9),
        ("add(a, b, f, `0.5`)", 12.0),
        ("subtract(a, b)", 5),
        ("multiply(a, b, f)", 35.0),
        ("divide(a, b)", 3.5),
        ("divide(`6`, `3`)", 2),  # exact: an integer, not 2.0
        ("mod(a, b)", 1),
        ("mod(`-7`, `3`)", 2),  # the sign of the divisor
        ("round(`2.675`, `2`)", 2.68),  # half away from zero, on the number as written
        ("round(`2.5`)", 3),
        ("round(`-2.5`)", -3),
        ("concat('id-', a, '-', `true`)", "id-7-true"),
        ("concat(list, `[3]`, `[]`)", [1, 2, 3]),
        ("format('{} of {}', a, name)", "7 of Ada"),
        ("format('{1}/{0} {{x}}', a, b)", "2/7 {x}"),
        ("format('plain')", "plain"),
        ("lower(name)", "ada"),
        ("upper(name)", "ADA"),
        ("trim(' x ')", "x"),
        ("split('a,b,,c', ',')", ["a", "b", "", "c"]),
        ("replace('a-b-c', '-', '+')", "a+b+c"),
        ("to_number(s)", 42),
        ("to_number(' 1.5e3 ')", 1500.0),
        ("to_number('12x')", None),
        ("to_number('12x', `0`)", 0),
        ("to_number(none, `-1`)", -1),
        ("to_number('1e400', `0`)", 0),  # beyond a double: not a number JSON can carry
        ("to_number('nan', `0`)", 0),
        ("to_number(`true`, `0`)", 0),
        ("to_number('1_000', `0`)", 0),  # Python's digit separators are not JSON
        ("time_to_ms('1970-01-01T00:00:01.5Z')", 1500),
        ("time_to_ms('2026-01-01T01:00:00+01:00')", 1_767_225_600_000),
        ("ms_to_time(`1767225600000`)", "2026-01-01T00:00:00.000Z"),
        ("add(length(list), `1`)", 3),  # JMESPath's own functions are all still there
    ],
)
def test_each_function_gives(expression: str, value: Any) -> None:
    got = search(expression)
    assert got == value
    assert type(got) is type(value)


@pytest.mark.parametrize(
    ("expression", "message"),
    [
        ("divide(a, `0`)", "divide(): division by zero (7 / 0)"),
        ("mod(a, `0`)", "mod(): division by zero"),
        ("add(a, name)", "invalid type for value: Ada, expected one of: ['number']"),
        ("add(a, b, name)", "invalid type for value: Ada"),  # the variadic tail is checked
        ("add(a, `true`)", "invalid type"),  # a boolean is not a number
        ("multiply(`1e300`, `1e300`)", "multiply() gave a number beyond the range of a double"),
        ("concat('x', none)", "concat() argument 2 is null"),
        ("concat('x', list)", "concat() joins strings or arrays, not both"),
        ("concat(name, `{}`)", "concat() argument 2 is object"),
        ("format('{} {}', a)", "uses argument 1 but got 1 after the template"),
        ("format('{x}', a)", "must start {}, {0}, {1}"),
        ("format('a } b')", "lone '}'"),
        ("round(f, `16`)", "digits must be a whole number from 0 to 15"),
        ("split(name, '')", "the separator is empty"),
        ("replace(name, '', 'x')", "the text to replace is empty"),
        ("time_to_ms('tomorrow')", "is not an ISO 8601 date-time"),
        ("time_to_ms('2026-01-01T00:00:00')", "has no timezone"),
        ("ms_to_time(`1e300`)", "is not a date JSON can carry"),
    ],
)
def test_bad_calls_are_expression_errors_naming_the_expression(
    expression: str, message: str
) -> None:
    with pytest.raises(ExpressionError) as caught:
        search(expression)
    assert str(caught.value).startswith(repr(expression) + ": ")
    assert message in str(caught.value)


@pytest.mark.parametrize(
    ("expression", "message"),
    [
        ("lenght(list)", "unknown function lenght(); did you mean length()?"),
        ("sum_all(list)", "unknown function sum_all()"),
        ("add(a)", "add() takes at least 2 arguments, not 1"),
        ("divide(a, b, `1`)", "divide() takes 2 arguments, not 3"),
        ("now(a)", "now() takes 0 arguments, not 1"),
        ("to_number()", "to_number() takes 1 to 2 arguments, not 0"),
        ("list[?add(@) > `1`]", "add() takes at least 2 arguments, not 1"),  # nested calls too
    ],
)
def test_unknown_functions_and_wrong_arity_are_found_when_compiling(
    expression: str, message: str
) -> None:
    with pytest.raises(ExpressionError, match=re.escape(message)):
        compile_expression(expression)


def test_what_a_function_produces_is_bounded() -> None:
    big = "x" * (functions.MAX_TEXT // 2 + 1)
    with pytest.raises(ExpressionError, match="more than 1000000 characters"):
        search("concat(s, s)", {"s": big})
    with pytest.raises(ExpressionError, match="more than 1000000 characters"):
        search("format('{}{}', s, s)", {"s": big})
    with pytest.raises(ExpressionError, match="more than 1000000 characters"):
        search("replace(s, 'x', 'yyy')", {"s": big})
    items = list(range(functions.MAX_ITEMS // 2 + 1))
    with pytest.raises(ExpressionError, match="more than 100000 items"):
        search("concat(l, l)", {"l": items})
    with pytest.raises(ExpressionError, match="more than 100000 items"):
        search("split(s, ',')", {"s": "," * functions.MAX_ITEMS})


@given(st.text(max_size=40), st.lists(st.integers() | st.text(max_size=5), max_size=4))
def test_format_answers_text_or_an_expression_error_for_any_template(
    template: str, args: list[Any]
) -> None:
    try:
        got = search("format(t, a[0], a[1], a[2], a[3])", {"t": template, "a": [*args, 0, 0, 0, 0]})
    except ExpressionError:
        return
    assert isinstance(got, str)


def test_the_readme_lists_every_function_it_adds() -> None:
    readme = (ROOT / "README.md").read_text()
    table = readme[readme.index("| function |") :]
    table = table[: table.index("\n\n")]
    first_cells = [line.split("|")[1] for line in table.splitlines()[2:]]
    documented = {name for cell in first_cells for name in re.findall(r"`(\w+)\(", cell)}
    ours = {
        name[len("_func_") :] for name in vars(functions.Functions) if name.startswith("_func_")
    }
    assert documented == ours
    schema = (ROOT / "schemas" / "blueprint.schema.json").read_text()
    assert all(f" {name}" in schema for name in ours)  # the expression's description


# -- inside the rules: the change's clock and random source --------------------------------------


COUNTER = """
blueprint: counter
start: init
states:
  init: {set: {count: 0}, next: loop}
  loop:
    set: {count: "${ add(state_history.count, `1`) }", at: "${ now() }", id: "${ uuid() }"}
    next: check
  check:
    choice:
      - when: "state_history.count < initial_data.times"
        goto: loop
    otherwise: done
  done:
    end: finished
    output:
      count: "${ state_history.count }"
      mean: "${ divide(initial_data.total, state_history.count) }"
      label: "${ format('{} runs of {}', state_history.count, upper(initial_data.name)) }"
      started_ms: "${ now_ms() }"
"""


def test_a_loop_counts_with_add_and_sees_the_fake_clock() -> None:
    job = RulesDriver(bp(COUNTER), {"times": 3, "total": 9, "name": "ada"}, now=1_767_225_600_000)
    assert job.status == "finished"
    assert job.doc["result"] == {
        "count": 3,
        "mean": 3,
        "label": "3 runs of ADA",
        "started_ms": 1_767_225_600_000,
    }
    assert job.doc["steps"]["loop"]["at"] == "2026-01-01T00:00:00.000Z"


def test_uuid_draws_from_the_changes_random_source() -> None:
    first = RulesDriver(bp(COUNTER), {"times": 1, "total": 1, "name": "a"}, seed=7)
    again = RulesDriver(bp(COUNTER), {"times": 1, "total": 1, "name": "a"}, seed=7)
    other = RulesDriver(bp(COUNTER), {"times": 1, "total": 1, "name": "a"}, seed=8)
    made = first.doc["steps"]["loop"]["id"]
    assert uuid.UUID(made).version == 4
    assert made == again.doc["steps"]["loop"]["id"]  # a seeded source: reproducible
    assert made != other.doc["steps"]["loop"]["id"]


def test_a_division_by_zero_fails_the_job_naming_the_state_and_the_expression() -> None:
    job = RulesDriver(bp(COUNTER.replace("count: 0}", "count: -1}")), {"times": 0, "total": 9})
    assert (job.status, job.doc["error"]["code"]) == ("failed", "EXPRESSION_ERROR")
    assert job.doc["error"]["state"] == "done"
    assert job.doc["error"]["message"] == (
        "state 'done': 'divide(initial_data.total, state_history.count)': "
        "divide(): division by zero (9 / 0)"
    )


FAN = """
blueprint: fan
start: fan
states:
  fan:
    parallel:
      for_each: initial_data.items
      task: share
      params: {share: "${ divide(`100`, item) }", at: "${ now_ms() }"}
      max_concurrency: 1
      retry: {max_attempts: 2, backoff: fixed, initial: 1s, jitter: 0}
    on: {success: done}
  done: {end: finished}
"""


def test_a_later_branch_whose_params_fail_fails_the_job_and_launches_nothing_more() -> None:
    job = RulesDriver(bp(FAN), {"items": [4, 0, 5]})
    first = job.lease("w")
    assert first["params"]["share"] == 25
    job.result(first, data={})
    assert (job.status, job.doc["error"]["code"]) == ("failed", "EXPRESSION_ERROR")
    assert job.doc["error"]["state"] == "fan"
    assert "divide(`100`, item)" in job.doc["error"]["message"]
    assert job.queued() == []
    assert job.leases == {}


def test_each_attempt_renders_its_params_again_at_its_own_time() -> None:
    job = RulesDriver(bp(FAN), {"items": [4]}, now=10_000)
    first = job.lease("w")
    assert first["params"]["at"] == 10_000
    job.result(first, status="failure", error={"code": "TRANSIENT_ERROR"})
    job.fire_due(12_000)
    second = job.lease("w")
    assert (second["metadata"]["attempt"], second["params"]["at"]) == (2, 11_000)  # its retry
