"""Field references in expressions: what they read, and the validate warnings about them."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.blueprint.loader import check_text, validate_paths
from engine.blueprint.references import chains, result_chain
from engine.expressions import compile_expression
from tests.conftest import BLUEPRINTS


@pytest.mark.parametrize(
    ("source", "read"),
    [
        ("steps.fetch.path", {"steps.fetch.path"}),
        ("a[0].b", {"a.[].b"}),
        ("a[].b", {"a.[].b"}),
        ("a[?x == `1`].y", {"a.[].x", "a.[].y"}),
        ("length(a.b) > `1`", {"a.b"}),
        ("a | b", {"a.b"}),
        ("{x: a.b, y: [c]}", {"a.b", "c"}),
        ("a.*.b", {"a"}),  # b is read on each value of a: names unknown
        ("sort_by(a, &b)", {"a"}),  # b is read on elements the function picks
        # Functions this module has never heard of are read through their arguments.
        ("concat(initial_data.a, add(steps.x.y, `1`))", {"initial_data.a", "steps.x.y"}),
        ("@.a", {"a"}),
        ('`{"a": 1}`', set()),
    ],
)
def test_chains_are_the_longest_field_paths_read(source: str, read: set[str]) -> None:
    found = {".".join(chain) for chain in chains(compile_expression(source))}
    # Every prefix is recorded too; the longest chains are the reads.
    longest = {c for c in found if not any(o != c and o.startswith(c + ".") for o in found)}
    assert longest == read


def test_the_result_chain_of_a_plain_path() -> None:
    assert result_chain(compile_expression("initial_data.images")) == ("initial_data", "images")
    assert result_chain(compile_expression("steps.a.list[]")) == ("steps", "a", "list")
    assert result_chain(compile_expression("length(x)")) is None


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet="ab.[]|&*@`'?=!<>(){}:, 0123456789_", max_size=40))
def test_any_expression_that_compiles_is_walked_without_error(source: str) -> None:
    try:
        expression = compile_expression(source)
    except Exception:
        return
    for chain in chains(expression):
        assert all(isinstance(part, str) for part in chain)


def test_no_warning_on_the_example_blueprints() -> None:
    _, problems = validate_paths([BLUEPRINTS])
    assert [str(p) for p in problems] == []


def test_a_step_that_ran_on_every_path_is_not_reported_even_through_a_loop() -> None:
    text = """\
blueprint: loop
start: a
states:
  a: {task: t, on: {success: b}}
  b:
    choice: [{when: "steps.a.again", goto: a}]
    otherwise: c
  c: {task: t, params: {x: "${ steps.a.x }"}, on: {success: d}}
  d: {end: finished, output: "${ steps.c }"}
"""
    blueprint, problems = check_text(text)
    assert blueprint is not None
    assert problems == []


def test_approval_fields_and_opaque_schemas() -> None:
    text = """\
blueprint: ask
input_schema:
  anyOf: [{required: [a]}, {required: [b]}]
start: ask
states:
  ask:
    approval: {message: "${ initial_data.anything }"}
    on: {approve: done}
  done: {end: finished, output: ["${ steps.ask.decison }", "${ steps.ask.by }"]}
"""
    blueprint, problems = check_text(text)
    assert blueprint is not None
    assert [(p.path, p.message) for p in problems] == [
        (
            "$.states.done.output[0]",
            "`steps.ask.decison`: an approval leaves decision, by and at; did you mean 'decision'?",
        )
    ]
