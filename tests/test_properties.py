"""Property-based tests of blueprint loading, compilation and DOT export (hypothesis).

Valid blueprints come from `tests.strategies.blueprint_dicts` (valid by construction); the
loader is also fuzzed with arbitrary text, YAML-ish text, arbitrary YAML values, values
shaped like blueprints and mutations of valid blueprints.
"""

from __future__ import annotations

import traceback
from collections import Counter
from collections.abc import Callable
from typing import Any, TypeVar

import networkx as nx
import pydot
import yaml
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from engine.blueprint.dot import START_NODE, to_dot
from engine.blueprint.loader import check_text, load_blueprint_text
from engine.blueprint.model import Blueprint
from engine.errors import BlueprintError
from tests.strategies import (
    blueprint_dicts,
    blueprint_shaped_values,
    dict_edges,
    mutated_blueprints,
    yaml_dumps,
    yaml_values,
    yamlish_texts,
)

FILE = "fuzz/blueprint.yaml"
T = TypeVar("T")

#: Compiling (JSON Schema) and parsing DOT back (pyparsing) take milliseconds each.
SLOW = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
FUZZ = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
#: Text that is rarely a mapping seldom reaches the compiler: many examples are cheap.
FUZZ_TEXT = settings(FUZZ, max_examples=500)


@st.composite
def valid_texts(draw: st.DrawFn) -> tuple[dict[str, Any], str]:
    data = draw(blueprint_dicts())
    return data, draw(yaml_dumps(data))


def unfaithful_dumps(data: Any) -> st.SearchStrategy[str]:
    return yaml_dumps(data, faithful=False)


def plain_yaml(data: Any) -> str:
    """Block-style YAML that PyYAML itself reads back as `data` (see yaml_dumps)."""
    text = yaml.safe_dump(data, sort_keys=False, width=10**9)
    assume(yaml.safe_load(text) == data)
    return text


def call_loader(function: Callable[[str, str], T], text: str) -> T:
    """`function(text, FILE)`; a BlueprintError passes, any other exception fails the test.

    The escaped exception becomes one AssertionError raised here, with the end of its
    traceback in the message: hypothesis then shrinks it as one stable failure (a
    RecursionError, say, is raised from a different frame on each replay)."""
    try:
        return function(text, FILE)
    except BlueprintError:
        raise
    except Exception as exc:
        where = "".join(traceback.format_exception(exc, limit=-6))
        message = f"{type(exc).__name__} escaped {function.__name__}: {exc}\n{where}"
    raise AssertionError(message)  # outside `except`: no __context__ to tell replays apart


def compile_valid(text: str) -> Blueprint:
    blueprint, problems = call_loader(check_text, text)
    errors = [str(p) for p in problems if p.severity == "error"]
    assert errors == [], f"a valid blueprint was rejected:\n{text}"
    assert blueprint is not None
    return blueprint


# -- valid blueprints ---------------------------------------------------------------------


@SLOW
@given(valid_texts())
def test_generated_blueprints_compile_to_what_was_written(case: tuple[dict[str, Any], str]):
    data, text = case
    blueprint = compile_valid(text)
    assert blueprint.raw == data
    assert blueprint.name == data["blueprint"]
    assert blueprint.version == data.get("version", 1)
    assert blueprint.start == data["start"]
    assert list(blueprint.states) == list(data["states"])
    compiled = Counter(
        (name, t.target) for name, state in blueprint.states.items() for t in state.transitions
    )
    assert compiled == dict_edges(data)
    for name, state in blueprint.states.items():
        assert state.name == name
        assert state.kind in data["states"][name]


@SLOW
@given(blueprint_dicts(), st.data())
def test_compilation_is_deterministic(data: dict[str, Any], draw: st.DataObject):
    text = plain_yaml(data)
    first, second = compile_valid(text), compile_valid(text)
    assert first.content_hash == second.content_hash
    assert to_dot(first) == to_dot(second)
    # The hash is the blueprint's content, not its formatting.
    restyled = compile_valid(draw.draw(yaml_dumps(data), label="restyled"))
    assert restyled.content_hash == first.content_hash
    assert to_dot(restyled) == to_dot(first)


def unquote(text: object) -> str:
    """Inverse of engine.blueprint.dot.quote, strict about what it accepts."""
    assert isinstance(text, str), text
    assert len(text) >= 2, text
    assert text[0] == text[-1] == '"', f"not a quoted DOT string: {text!r}"
    out: list[str] = []
    body = iter(text[1:-1])
    for ch in body:
        if ch == "\\":
            escaped = next(body, None)
            assert escaped in ('"', "\\", "n"), f"unexpected escape \\{escaped} in {text!r}"
            out.append("\n" if escaped == "n" else escaped)
        else:
            assert ch != '"', f"unescaped quote in {text!r}"
            out.append(ch)
    return "".join(out)


def parse_dot(dot: str) -> tuple[str, dict[str, str], Counter[tuple[str, str, str]]]:
    """(graph name, {node: label}, multiset of (source, target, label) edges), unquoted."""
    graphs = pydot.graph_from_dot_data(dot)
    assert graphs is not None, dot
    assert len(graphs) == 1, dot
    (graph,) = graphs
    labels: dict[str, str] = {}
    for node in graph.get_nodes():
        name = node.get_name()
        if name in ("graph", "node", "edge"):  # unquoted: default attribute statements
            continue
        assert unquote(name) not in labels, f"node {name} declared twice:\n{dot}"
        labels[unquote(name)] = unquote(node.get("label"))
    edges = Counter(
        (unquote(e.get_source()), unquote(e.get_destination()), unquote(e.get("label")))
        for e in graph.get_edges()
    )
    return unquote(graph.get_name()), labels, edges


@SLOW
@given(blueprint_dicts(), st.data())
def test_dot_parses_back_to_the_same_graph(data: dict[str, Any], draw: st.DataObject):
    blueprint = compile_valid(plain_yaml(data))
    names = list(blueprint.states)
    expected_labels = {START_NODE: ""} | {
        name: f"{name}\n{state.summary}" for name, state in blueprint.states.items()
    }
    expected_edges = Counter(
        (name, t.target, t.label)
        for name, state in blueprint.states.items()
        for t in state.transitions
    )
    expected_edges[(START_NODE, blueprint.start, "start")] += 1

    dot = to_dot(blueprint)
    name, labels, edges = parse_dot(dot)
    assert name == blueprint.name
    assert labels == expected_labels, dot
    assert edges == expected_edges, dot

    # A job's path drawn on the graph changes colours, never the graph.
    visited = draw.draw(st.lists(st.sampled_from(names), unique=True), label="visited")
    triples = [(n, t.trigger, t.target) for n in names for t in blueprint.states[n].transitions]
    taken = draw.draw(st.lists(st.sampled_from(triples)), label="taken") if triples else []
    current = draw.draw(st.sampled_from([None, *names]), label="current")
    highlighted = to_dot(blueprint, visited=visited, taken=taken, current=current)
    assert parse_dot(highlighted) == (name, labels, edges), highlighted


@SLOW
@given(blueprint_dicts())
def test_compiled_graph_matches_the_states(data: dict[str, Any]):
    blueprint = compile_valid(plain_yaml(data))
    graph = blueprint.graph
    assert nx.is_frozen(graph)
    assert sorted(graph.nodes) == sorted(blueprint.states)
    assert graph.number_of_nodes() == len(data["states"])
    for name, state in blueprint.states.items():
        assert graph.nodes[name]["state"] is state
        successors = set(graph.successors(name))
        assert successors == {t.target for t in state.transitions}
        for target in successors:
            want = tuple(t for t in state.transitions if t.target == target)
            assert graph.edges[name, target]["transitions"] == want
    assert sum(len(d["transitions"]) for _, _, d in graph.edges(data=True)) == sum(
        dict_edges(data).values()
    )


# -- fuzzing the loader -------------------------------------------------------------------


def assert_loads_or_reports(text: str) -> None:
    """The loader returns a Blueprint or raises a BlueprintError with located problems;
    check_text agrees with it. Any other exception fails the test."""
    blueprint, problems = call_loader(check_text, text)
    errors = [p for p in problems if p.severity == "error"]
    assert (blueprint is None) == bool(errors), problems
    error: BlueprintError | None = None
    try:
        loaded = call_loader(load_blueprint_text, text)
    except BlueprintError as exc:
        error = exc
    if error is None:
        assert isinstance(loaded, Blueprint)
        assert blueprint is not None
        assert blueprint.content_hash == loaded.content_hash
        assert isinstance(to_dot(loaded), str)
        return
    assert blueprint is None
    assert error.problems, "a BlueprintError must list at least one problem"
    assert error.problems == errors
    lines = len(text.splitlines()) + 1
    for problem in error.problems:
        assert problem.file == FILE
        assert 1 <= problem.line <= lines, problem
        assert problem.column >= 1, problem
        assert problem.path.startswith("$"), problem
        assert problem.message, problem
        assert str(problem).startswith(f"{FILE}:{problem.line}:{problem.column}: ")


@FUZZ_TEXT
@given(st.text())
def test_loader_survives_arbitrary_text(text: str):
    assert_loads_or_reports(text)


@FUZZ_TEXT
@given(yamlish_texts())
def test_loader_survives_yamlish_text(text: str):
    assert_loads_or_reports(text)


@FUZZ
@given(st.one_of(yaml_values, blueprint_shaped_values).flatmap(unfaithful_dumps))
def test_loader_survives_arbitrary_yaml_values(text: str):
    assert_loads_or_reports(text)


@FUZZ
@given(mutated_blueprints().flatmap(unfaithful_dumps))
def test_loader_survives_mutated_blueprints(text: str):
    assert_loads_or_reports(text)
