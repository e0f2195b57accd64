"""Graphviz DOT for a compiled blueprint (pydot), meant to be pasted into Graphviz Online.

Output is deterministic: states appear in blueprint order and edges in transition order,
so the same YAML always gives byte-identical DOT.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

import pydot

from engine.blueprint.model import Blueprint, EndState, PerKind, State

START_NODE = "__start__"

_FONT = "Helvetica"
_KIND_STYLE: PerKind[dict[str, str]] = {
    "task": {"shape": "box", "style": "rounded,filled", "fillcolor": "#e8f0fe"},
    "choice": {"shape": "diamond", "style": "filled", "fillcolor": "#fff4d6"},
    "parallel": {"shape": "box3d", "style": "filled", "fillcolor": "#e6f4f1"},
    "wait": {"shape": "box", "style": "rounded,dashed,filled", "fillcolor": "#f3f3f3"},
    "approval": {"shape": "hexagon", "style": "filled", "fillcolor": "#f3e8fd"},
    "listen": {"shape": "invhouse", "style": "filled", "fillcolor": "#fdf0e8"},
    "subflow": {
        "shape": "box",
        "style": "rounded,filled",
        "fillcolor": "#e8f0fe",
        "peripheries": "2",
    },
    "set": {"shape": "note", "style": "filled", "fillcolor": "#fafafa"},
    "end": {"shape": "box", "style": "rounded,filled,bold"},  # coloured by outcome below
}
_END_STYLE = {
    "finished": {
        "shape": "box",
        "style": "rounded,filled,bold",
        "fillcolor": "#d7f5dc",
        "color": "#2e7d32",
    },
    "failed": {
        "shape": "box",
        "style": "rounded,filled,bold",
        "fillcolor": "#fde0dc",
        "color": "#c62828",
    },
}
_HIGHLIGHT = "#1565c0"


def quote(text: str) -> str:
    """A DOT double-quoted string (DOT keywords such as `node` must be quoted too)."""
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{escaped}"'


def _node_attrs(state: State, start: str) -> dict[str, Any]:
    attrs: dict[str, Any] = dict(_KIND_STYLE[state.kind])
    if isinstance(state, EndState):
        attrs.update(_END_STYLE[state.outcome])
    attrs["label"] = quote(f"{state.name}\n{state.summary}")
    if state.name == start:
        attrs["penwidth"] = "2"
    return attrs


def to_pydot(
    blueprint: Blueprint,
    *,
    visited: Collection[str] = (),
    taken: Collection[tuple[str, str, str]] = (),
    current: str | None = None,
) -> pydot.Dot:
    """The blueprint as a pydot graph.

    `visited` (state names), `taken` ((source, trigger, target) edges) and `current` draw a
    job's path on the graph.
    """
    graph = pydot.Dot(quote(blueprint.name), graph_type="digraph")
    graph.set_graph_defaults(
        rankdir="TB",
        fontname=quote(_FONT),
        labelloc="t",
        label=quote(f"{blueprint.name} v{blueprint.version}"),
    )
    graph.set_node_defaults(fontname=quote(_FONT), fontsize="11")
    graph.set_edge_defaults(fontname=quote(_FONT), fontsize="9")
    start_attrs: dict[str, Any] = {"shape": "point", "width": "0.2", "label": quote("")}
    graph.add_node(pydot.Node(quote(START_NODE), **start_attrs))
    for name, state in blueprint.states.items():
        attrs = _node_attrs(state, blueprint.start)
        if name in visited:
            attrs["color"] = quote(_HIGHLIGHT)
            attrs["penwidth"] = "2"
        if name == current:
            attrs["penwidth"] = "3"
            attrs["xlabel"] = quote("current")
        node: dict[str, Any] = {k: _q(v) for k, v in attrs.items()}
        graph.add_node(pydot.Node(quote(name), **node))
    start_label = "start"
    if blueprint.concurrency is not None:  # the line every job waits in before its start
        spec = blueprint.concurrency
        start_label += f"\nconcurrency {spec.limit} per {spec.source}"
    start_edge: dict[str, Any] = {"label": quote(start_label)}
    if visited:
        start_edge.update(color=quote(_HIGHLIGHT), penwidth="2")
    graph.add_edge(pydot.Edge(quote(START_NODE), quote(blueprint.start), **start_edge))
    for name, state in blueprint.states.items():
        for transition in state.transitions:
            edge: dict[str, Any] = {"label": quote(transition.label)}
            if (name, transition.trigger, transition.target) in taken:
                edge.update(color=quote(_HIGHLIGHT), penwidth="2", fontcolor=quote(_HIGHLIGHT))
            graph.add_edge(pydot.Edge(quote(name), quote(transition.target), **edge))
    return graph


def _q(value: str) -> str:
    return value if value.startswith('"') or value.isdigit() else quote(value)


def to_dot(blueprint: Blueprint, **highlight: object) -> str:
    """DOT text for the blueprint (see `to_pydot` for the highlight arguments)."""
    return str(to_pydot(blueprint, **highlight).to_string())  # type: ignore[arg-type]


class GraphvizMissing(RuntimeError):
    """Graphviz's `dot` program is not installed."""


INSTALL_HINT = (
    "Graphviz `dot` is not installed, so only --format dot works. Install Graphviz "
    "(Debian/Ubuntu: `apt-get install graphviz`, Fedora: `dnf install graphviz`, macOS: "
    "`brew install graphviz`), or paste the DOT output into Graphviz Online."
)


def render(blueprint: Blueprint, fmt: str) -> bytes:
    """Render through Graphviz `dot` to `svg` or `png`; GraphvizMissing when absent."""
    import shutil

    if shutil.which("dot") is None:
        raise GraphvizMissing(INSTALL_HINT)
    data = to_pydot(blueprint).create(prog="dot", format=fmt)
    return data if isinstance(data, bytes) else data.encode("utf-8")
