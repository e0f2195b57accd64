"""Every table keyed by state kind covers exactly the kinds the language has."""

from __future__ import annotations

from typing import get_args

from engine.blueprint.dot import _KIND_STYLE
from engine.blueprint.model import STATE_KINDS, PerKind, StateKind
from engine.runtime.kinds import KINDS
from engine.runtime.step import Kind


def test_the_kind_list_the_literal_and_the_table_type_agree() -> None:
    assert set(STATE_KINDS) == set(get_args(StateKind))
    assert set(PerKind.__annotations__) == set(STATE_KINDS)


def test_every_kind_has_rules_and_a_graph_style() -> None:
    assert set(KINDS) == set(STATE_KINDS)
    assert all(isinstance(rules, Kind) for rules in KINDS.values())
    assert set(_KIND_STYLE) == set(STATE_KINDS)


def test_every_kind_that_is_entered_has_its_own_enter_hook() -> None:
    for kind in STATE_KINDS:
        assert type(KINDS[kind]).enter is not Kind.enter, f"{kind} has no enter hook"
