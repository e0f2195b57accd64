"""Rules of the blueprint language that the JSON Schema cannot express.

Every function here reads raw, possibly invalid, blueprint data and never assumes a field
has the right type: the schema reports wrong types, so these checks skip what they cannot
read. Each returns findings, `(path, message, point at the key)`, that the compiler turns
into problems.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import networkx as nx

from engine.blueprint.model import NEVER_RETRIED, STATE_KINDS
from engine.blueprint.schema import did_you_mean
from engine.blueprint.transitions import raw_transitions, state_kind
from engine.blueprint.yamlsource import Path
from engine.durations import parse_duration

Finding = tuple[Path, str, bool]

_KINDS_TEXT = ", ".join(STATE_KINDS)
_TRANSITION_KEYS = ("next", "on", "otherwise")
#: Keys a state may have besides its kind key; a state without a kind but with a key
#: outside this set has probably misspelled its kind.
_STATE_FIELDS = frozenset(
    {
        "description",
        "next",
        "on",
        "otherwise",
        "params",
        "priority",
        "retry",
        "timeouts",
        "output_schema",
        "output",
        "error",
    }
)


def state_shapes(data: dict[str, Any]) -> tuple[dict[str, Any], set[Path], list[Finding]]:
    """Exactly one kind per state; end states without transitions.

    Returns the data to give the schema (transitions of end states removed), the paths
    whose schema errors would only repeat a finding made here, and the findings."""
    findings: list[Finding] = []
    skip: set[Path] = set()
    states = data.get("states")
    if not isinstance(states, dict):
        return data, skip, findings
    checked = dict(data)
    checked["states"] = dict(states)
    for name, raw in states.items():
        if not isinstance(raw, dict):
            continue
        path: Path = ("states", name)
        kinds = [k for k in STATE_KINDS if k in raw]
        if not kinds:
            unknown = [k for k in raw if not isinstance(k, str) or k not in _STATE_FIELDS]
            if unknown:  # such as `emit:`: name it, rather than say the state has no kind
                listed = ", ".join(repr(k) for k in unknown)
                message = (
                    f"state {name!r}: {listed} {'is' if len(unknown) == 1 else 'are'} not a "
                    f"kind of state; give exactly one of {_KINDS_TEXT}"
                )
            else:
                message = f"state {name!r} has no kind; give exactly one of {_KINDS_TEXT}"
            message += _misspelled_kind(raw)
            findings.append((path, message, True))
            skip.add(path)
        elif len(kinds) > 1:
            message = f"state {name!r} has several kinds ({', '.join(kinds)}); give exactly one"
            findings.append((path, message, True))
            skip.add(path)
        elif kinds == ["end"]:
            extra = [k for k in _TRANSITION_KEYS if k in raw]
            for key in extra:
                message = f"an end state has no outgoing transitions; remove {key!r}"
                findings.append(((*path, key), message, True))
            if extra:
                checked["states"][name] = {k: v for k, v in raw.items() if k not in extra}
    return checked, skip, findings


def _misspelled_kind(raw: dict[str, Any]) -> str:
    """`; did you mean 'task'?` when an unknown key of the state is close to a kind."""
    for key in raw:
        if isinstance(key, str) and key not in _STATE_FIELDS:
            hint = did_you_mean(key, STATE_KINDS)
            if hint:
                return hint
    return ""


def retry_findings(path: Path, retry: Any) -> list[Finding]:
    """Codes that are never retried, and an initial delay longer than the longest one.
    `path` is the retry policy's."""
    if not isinstance(retry, dict):
        return []
    findings: list[Finding] = []
    codes = retry.get("on")
    for i, code in enumerate(codes if isinstance(codes, list) else []):
        if isinstance(code, str) and code in NEVER_RETRIED:
            findings.append(((*path, "on", i), f"{code} is never retried; remove it", False))
    try:
        initial = parse_duration(retry.get("initial", 1))
        longest = parse_duration(retry.get("max", 300))
    except ValueError:
        return findings  # the schema reports bad durations
    if initial > longest:
        findings.append(((*path, "initial"), "retry.initial is longer than retry.max", False))
    return findings


def end_findings(path: Path, raw: dict[str, Any]) -> list[Finding]:
    if raw.get("end") == "finished" and "error" in raw:
        return [((*path, "error"), "`error` is only for `end: failed`", True)]
    return []


def timeout_findings(path: Path, raw: dict[str, Any], kind: str) -> list[Finding]:
    """`<kind>.timeout` and `on.timeout` come together (approval and listen states)."""
    findings: list[Finding] = []
    spec = raw.get(kind)
    spec = spec if isinstance(spec, dict) else {}
    on = raw.get("on")
    has_timeout_edge = isinstance(on, dict) and "timeout" in on
    if "timeout" in spec and not has_timeout_edge:
        message = f"{kind}.timeout needs an `on.timeout` transition"
        findings.append(((*path, kind, "timeout"), message, False))
    if has_timeout_edge and "timeout" not in spec:
        message = f"on.timeout is never taken without {kind}.timeout"
        findings.append(((*path, "on", "timeout"), message, True))
    return findings


def approval_findings(path: Path, raw: dict[str, Any]) -> list[Finding]:
    """`approval.timeout` and `on.timeout` come together; a decision besides timeout."""
    findings = timeout_findings(path, raw, "approval")
    on = raw.get("on")
    if isinstance(on, dict) and not [k for k in on if k != "timeout"]:
        message = "an approval needs at least one decision besides `timeout`"
        findings.append(((*path, "on"), message, False))
    return findings


def parallel_findings(path: Path, raw: dict[str, Any]) -> list[Finding]:
    """A race (`compete: true`) ends at its first success, so it has no branch failure
    policy to choose: it fails only once every branch has failed."""
    spec = raw.get("parallel")
    if not isinstance(spec, dict) or spec.get("compete") is not True:
        return []
    if "on_branch_failure" not in spec:
        return []
    message = (
        "`on_branch_failure` does not apply to a race (`compete: true`): a failed branch "
        "leaves the others racing, and the state fails once every branch has failed; remove it"
    )
    return [((*path, "parallel", "on_branch_failure"), message, True)]


def date_time_problem(text: str) -> str | None:
    """Why `text` is not an ISO 8601 date-time with a timezone, or None when it is one."""
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return f"{text!r} is not an ISO 8601 date-time such as 2030-01-31T09:00:00Z"
    if moment.tzinfo is None:
        return f"{text!r} has no timezone; add Z or an offset such as +02:00"
    return None


def graph_findings(states: dict[str, Any], start: str) -> list[Finding]:
    """Unreachable states, and reachable states from which no end state can be reached.

    Only meaningful when every state is sound and every transition target exists."""
    graph: nx.DiGraph[str] = nx.DiGraph()
    graph.add_nodes_from(states)
    for name, raw in states.items():
        graph.add_edges_from((name, t.target) for t, _ in raw_transitions(name, raw))
    reachable = {start} | nx.descendants(graph, start)
    ends = {name for name, raw in states.items() if state_kind(raw) == "end"}
    can_end = set(ends)
    for end in ends:
        can_end |= nx.ancestors(graph, end)
    findings: list[Finding] = []
    for name in states:
        if name not in reachable:
            message = (
                f"state {name!r} is unreachable: no path from start state {start!r} leads to it"
            )
            findings.append((("states", name), message, True))
        elif name not in can_end:
            trapped = ", ".join(sorted({name} | nx.descendants(graph, name)))
            message = (
                f"no end state can be reached from {name!r}: every path from it stays within "
                f"{trapped} (a trap cycle)"
            )
            findings.append((("states", name), message, True))
    return findings


# What a job has when it is submitted: a concurrency key can only depend on these.
SUBMIT_CONTEXT = ("initial_data", "job")


def concurrency_findings(path: Path, roots: set[str]) -> list[Finding]:
    """A concurrency key is computed when the job is submitted, before any state ran: an
    expression reading `steps`, `state_history`, `item` or `index` would always see nothing.
    `roots`: the context fields the key's expressions read."""
    wrong = sorted(root for root in roots if root not in SUBMIT_CONTEXT)
    if not wrong:
        return []
    message = (
        f"the concurrency key is computed at submission, from {' and '.join(SUBMIT_CONTEXT)} "
        f"only; {', '.join(wrong)} has nothing then"
    )
    return [(path, message, False)]
