"""Reading a state's outgoing transitions from raw (possibly invalid) blueprint data.

Runs before compilation so that transition targets can be checked even in a file with
schema errors elsewhere; it never assumes a field has the right type.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from engine.blueprint.model import STATE_KINDS, PerKind, StateKind, Transition
from engine.blueprint.yamlsource import Path
from engine.durations import format_duration, parse_duration


def state_kind(raw: Any) -> StateKind | None:
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


Found = Iterator[tuple[Transition, Path]]


def raw_transitions(name: str, raw: Any) -> Found:
    """Every (transition, path of its target) the state declares, in source order."""
    kind = state_kind(raw)
    if kind is None:
        return
    assert isinstance(raw, dict)
    readers: PerKind[Callable[[Path, dict[str, Any]], Found]] = {
        "task": _on_reader(_task_label),
        "choice": _choice_transitions,
        "parallel": _on_reader(
            _fixed({"success": "all branches done", "failure": "branch failed"})
        ),
        "wait": _next_reader(_wait_label),
        "approval": _on_reader(_approval_label),
        "listen": _on_reader(_listen_label),
        "subflow": _on_reader(_fixed({"success": "child finished", "failure": "child failed"})),
        "set": _next_reader(lambda raw: "then"),
        "end": lambda base, raw: iter(()),
    }
    yield from readers[kind](("states", name), raw)


def _next_reader(label: Callable[[dict[str, Any]], str]) -> Callable[[Path, dict[str, Any]], Found]:
    """States that go on by `next:` (set, wait)."""

    def read(base: Path, raw: dict[str, Any]) -> Found:
        target = raw.get("next")
        if isinstance(target, str):
            yield Transition("next", target, label(raw)), (*base, "next")

    return read


def _on_reader(
    label: Callable[[str, dict[str, Any]], str],
) -> Callable[[Path, dict[str, Any]], Found]:
    """States whose outcomes map to targets under `on:` (task, parallel, approval, listen,
    subflow). A caught error code (`error:CARD_DECLINED`) reads `error CARD_DECLINED` on its
    edge."""

    def read(base: Path, raw: dict[str, Any]) -> Found:
        on = raw.get("on")
        for trigger, target in on.items() if isinstance(on, dict) else ():
            if isinstance(target, str):
                shown = f"error {trigger[6:]}" if is_catch(trigger) else label(trigger, raw)
                yield Transition(trigger, target, shown), (*base, "on", trigger)

    return read


def is_catch(trigger: str) -> bool:
    """Whether a trigger catches a failure by its error code (`error:<CODE>`)."""
    return trigger.startswith("error:")


def _choice_transitions(base: Path, raw: dict[str, Any]) -> Found:
    rules = raw.get("choice")
    for i, rule in enumerate(rules if isinstance(rules, list) else []):
        if isinstance(rule, dict) and isinstance(rule.get("goto"), str):
            when = rule.get("when")
            label = f"when {when}" if isinstance(when, str) else "when ?"
            yield Transition(f"when[{i}]", rule["goto"], label), (*base, "choice", i, "goto")
    if isinstance(raw.get("otherwise"), str):
        yield Transition("otherwise", raw["otherwise"], "otherwise"), (*base, "otherwise")


def _wait_label(raw: dict[str, Any]) -> str:
    wait = raw.get("wait")
    if isinstance(wait, dict):
        until = wait.get("until")
        return f"at {until}" if isinstance(until, str) else "at time"
    text = _duration_text(wait)
    return f"after {text}" if text else "after wait"


def _task_label(trigger: str, raw: dict[str, Any]) -> str:
    if trigger == "failure":
        retry = raw.get("retry")
        attempts = retry.get("max_attempts", 3) if isinstance(retry, dict) else 3
        if isinstance(attempts, int) and attempts > 1:
            return f"failure (after {attempts} attempts)"
    return trigger


def _approval_label(trigger: str, raw: dict[str, Any]) -> str:
    if trigger != "timeout":
        return trigger
    approval = raw.get("approval")
    text = _duration_text(approval.get("timeout")) if isinstance(approval, dict) else None
    return f"timeout ({text})" if text else "timeout"


def _listen_label(trigger: str, raw: dict[str, Any]) -> str:
    listen = raw.get("listen")
    listen = listen if isinstance(listen, dict) else {}
    if trigger == "received":
        event = listen.get("event")
        return f"event {event}" if isinstance(event, str) else "event"
    text = _duration_text(listen.get("timeout")) if trigger == "timeout" else None
    return f"timeout ({text})" if text else trigger


def _fixed(labels: dict[str, str]) -> Callable[[str, dict[str, Any]], str]:
    return lambda trigger, raw: labels.get(trigger, trigger)
