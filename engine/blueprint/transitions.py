"""Reading a state's outgoing transitions from raw (possibly invalid) blueprint data.

Runs before compilation so that transition targets can be checked even in a file with
schema errors elsewhere; it never assumes a field has the right type.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from engine.blueprint.model import STATE_KINDS, Transition
from engine.blueprint.yamlsource import Path
from engine.durations import format_duration, parse_duration


def state_kind(raw: Any) -> str | None:
    """The state's kind if it has exactly one kind key, else None."""
    if not isinstance(raw, dict):
        return None
    kinds = [k for k in STATE_KINDS if k in raw]
    return kinds[0] if len(kinds) == 1 else None


def _duration_text(value: Any) -> str | None:
    try:
        return format_duration(parse_duration(value))
    except ValueError:
        return None


def raw_transitions(name: str, raw: Any) -> Iterator[tuple[Transition, Path]]:
    """Every (transition, path of its target) the state declares, in source order."""
    kind = state_kind(raw)
    base: Path = ("states", name)
    if kind is None or kind == "end":
        return
    assert isinstance(raw, dict)
    if kind in ("set", "wait"):
        target = raw.get("next")
        if isinstance(target, str):
            yield Transition("next", target, _next_label(kind, raw)), (*base, "next")
        return
    if kind == "choice":
        rules = raw.get("choice")
        for i, rule in enumerate(rules if isinstance(rules, list) else []):
            if isinstance(rule, dict) and isinstance(rule.get("goto"), str):
                when = rule.get("when")
                label = f"when {when}" if isinstance(when, str) else "when ?"
                yield Transition(f"when[{i}]", rule["goto"], label), (*base, "choice", i, "goto")
        if isinstance(raw.get("otherwise"), str):
            yield Transition("otherwise", raw["otherwise"], "otherwise"), (*base, "otherwise")
        return
    on = raw.get("on")
    if not isinstance(on, dict):
        return
    for trigger, target in on.items():
        if isinstance(target, str):
            label = _on_label(kind, trigger, raw)
            yield Transition(trigger, target, label), (*base, "on", trigger)


def _next_label(kind: str, raw: dict[str, Any]) -> str:
    if kind == "set":
        return "then"
    wait = raw.get("wait")
    if isinstance(wait, dict):
        until = wait.get("until")
        return f"at {until}" if isinstance(until, str) else "at time"
    text = _duration_text(wait)
    return f"after {text}" if text else "after wait"


def _on_label(kind: str, trigger: str, raw: dict[str, Any]) -> str:
    if kind == "task":
        if trigger == "failure":
            retry = raw.get("retry")
            attempts = retry.get("max_attempts", 3) if isinstance(retry, dict) else 3
            if isinstance(attempts, int) and attempts > 1:
                return f"failure (after {attempts} attempts)"
            return "failure"
        if trigger == "timeout":
            return "timeout"
        return trigger
    if kind == "parallel":
        return {"success": "all branches done", "failure": "branch failed"}.get(trigger, trigger)
    if kind == "subflow":
        return {"success": "child finished", "failure": "child failed"}.get(trigger, trigger)
    if kind == "approval" and trigger == "timeout":
        approval = raw.get("approval")
        text = _duration_text(approval.get("timeout")) if isinstance(approval, dict) else None
        return f"timeout ({text})" if text else "timeout"
    return trigger
