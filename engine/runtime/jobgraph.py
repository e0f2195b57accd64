"""A job's path drawn on its blueprint's graph, for pasting into Graphviz Online."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from engine.blueprint.dot import to_dot
from engine.blueprint.model import Blueprint
from engine.runtime.jobdoc import TERMINAL


def job_dot(
    blueprint: Blueprint, doc: Mapping[str, Any], events: Iterable[Mapping[str, Any]]
) -> str:
    """DOT of `blueprint` with the states this job visited and the edges it took highlighted,
    and its current state marked (unless the job has ended)."""
    visited: set[str] = set()
    taken: set[tuple[str, str, str]] = set()
    for event in events:
        if event.get("event") == "state_entered" and event.get("state"):
            visited.add(str(event["state"]))
        elif event.get("event") == "state_left" and event.get("to"):
            taken.add((str(event["state"]), str(event["via"]), str(event["to"])))
    current = None if doc.get("status") in TERMINAL else doc.get("state")
    return to_dot(blueprint, visited=visited, taken=taken, current=current)
