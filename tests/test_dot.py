"""DOT export and the `interlock graph` command."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pydot

from engine.blueprint.dot import quote, to_dot
from engine.blueprint.loader import load_blueprint, load_blueprint_text
from tests.conftest import BLUEPRINTS, ROOT

KEYWORD_NAMES = """
blueprint: keywords
start: node
states:
  node:
    task: check
    on: {success: edge, failure: graph}
  edge:
    choice:
      - when: "x == 'q\\\\\\"z'"
        goto: strict
    otherwise: graph
  strict: {end: finished}
  graph: {end: failed}
"""


def _parsed(dot: str) -> pydot.Dot:
    graphs = pydot.graph_from_dot_data(dot)
    assert graphs is not None
    assert len(graphs) == 1
    return graphs[0]


def _unquote(name: object) -> str:
    assert isinstance(name, str)
    return name[1:-1].replace('\\"', '"') if name.startswith('"') else name


def test_dot_keywords_as_state_names_stay_nodes() -> None:
    bp = load_blueprint_text(KEYWORD_NAMES)
    graph = _parsed(to_dot(bp))
    # Unquoted `node`/`edge`/`graph` entries are attribute statements, not states.
    states = {_unquote(n.get_name()) for n in graph.get_nodes() if n.get_name().startswith('"')}
    assert states == {"__start__", "node", "edge", "strict", "graph"}
    edges = {(_unquote(e.get_source()), _unquote(e.get_destination())) for e in graph.get_edges()}
    assert ("node", "edge") in edges
    assert ("edge", "strict") in edges


def test_every_transition_is_a_labelled_edge() -> None:
    bp = load_blueprint(BLUEPRINTS / "retries_timeouts.yaml")
    graph = _parsed(to_dot(bp))
    edges = {
        (_unquote(e.get_source()), _unquote(e.get_destination()), _unquote(e.get("label")))
        for e in graph.get_edges()
    }
    assert ("__start__", "charge", "start") in edges
    assert ("charge", "receipt", "success") in edges
    assert ("charge", "declined", "declined") in edges
    assert ("charge", "gateway_down", "timeout") in edges
    assert ("charge", "gateway_down", "failure (after 5 attempts)") in edges
    assert len(edges) == 1 + sum(len(s.transitions) for s in bp.states.values())


def test_end_states_are_styled_by_outcome_and_start_is_marked() -> None:
    bp = load_blueprint(BLUEPRINTS / "retries_timeouts.yaml")
    nodes = {n.get_name(): n for n in _parsed(to_dot(bp)).get_nodes()}
    assert nodes['"done"'].get("fillcolor") != nodes['"declined"'].get("fillcolor")
    assert nodes['"done"'].get("color") == '"#2e7d32"'
    assert nodes['"declined"'].get("color") == '"#c62828"'
    assert nodes['"charge"'].get("penwidth") == "2"
    assert nodes['"charge"'].get("label") == quote("charge\ntask: charge_card")


def test_dot_is_byte_identical_across_processes() -> None:
    script = (
        "import sys; from engine.blueprint.loader import load_blueprint;"
        "from engine.blueprint.dot import to_dot;"
        "sys.stdout.write(to_dot(load_blueprint(sys.argv[1])))"
    )
    path = str(BLUEPRINTS / "choice_routing.yaml")
    outputs = set()
    for seed in ("1", "2", "3"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        run = subprocess.run(
            [sys.executable, "-c", script, path], capture_output=True, env=env, check=True
        )
        outputs.add(run.stdout)
    assert len(outputs) == 1


def _interlock(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "interlock_cli", *args],
        capture_output=True,
        cwd=ROOT,
        env=env,
        check=False,
        timeout=60,
    )


def test_graph_command_prints_dot() -> None:
    run = _interlock("graph", "blueprints/approval.yaml")
    assert run.returncode == 0, run.stderr
    text = run.stdout.decode()
    assert text.startswith('digraph "expense_approval" {')
    assert '"review" -> "escalate" [label="timeout (2d)"];' in text


def test_graph_command_renders_svg(tmp_path: Path, dot_program: str) -> None:
    out = tmp_path / "g.svg"
    run = _interlock("graph", "blueprints/approval.yaml", "--format", "svg", "-o", str(out))
    assert run.returncode == 0, run.stderr
    assert out.read_bytes().lstrip().startswith((b"<?xml", b"<svg"))


def test_graph_command_explains_how_to_install_graphviz(tmp_path: Path) -> None:
    env = {**os.environ, "PATH": str(tmp_path)}  # no `dot` anywhere on PATH
    run = _interlock("graph", "blueprints/approval.yaml", "--format", "png", env=env)
    assert run.returncode == 2
    assert b"apt-get install graphviz" in run.stderr
    assert b"Traceback" not in run.stderr


def test_graph_command_reports_an_invalid_blueprint(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("blueprint: x\nstart: a\nstates:\n  a: {end: done}\n")
    run = _interlock("graph", str(bad))
    assert run.returncode == 1
    assert f'{bad}:4:12: $.states.a.end: "done" is not allowed'.encode() in run.stderr
    assert b"Traceback" not in run.stderr
