"""Hypothesis strategies for blueprints.

`blueprint_dicts()` builds random *valid* blueprints as plain data, correct by
construction: states are ordered, state i always has a transition to state i + 1 (so every
state is reachable from the start, the first one, and every non-end state has a forward
path to an end state), the remaining end states are hung on states that can take one more
transition, and every other transition goes anywhere (forward, backward or to itself).

The rest is raw material for fuzzing the loader: YAML-ish text with anchors, aliases,
merges and tags, arbitrary YAML values, values shaped like a blueprint, and mutations of
valid blueprints.
"""

from __future__ import annotations

import copy
import json
from collections import Counter
from typing import Any, TypeVar

import yaml
from hypothesis import assume
from hypothesis import strategies as st

T = TypeVar("T")


def _words(text: str) -> tuple[str, ...]:
    return tuple(text.split())


# -- names ------------------------------------------------------------------------------

DOT_KEYWORDS = ("node", "edge", "graph", "digraph", "subgraph", "strict")

#: State names that are DOT keywords (keywords are case-insensitive in DOT), YAML 1.1
#: booleans/nulls, names with `-`, and names that look like blueprint keys.
SPECIAL_STATE_NAMES = (
    *DOT_KEYWORDS,
    *_words("Node EDGE Graph DiGraph SubGraph STRICT"),
    *_words("on off yes no y n null Null NULL true False nan inf e1"),
    *_words("a-b x--y A- z-_-9 start end task states success"),
    "a" * 64,
    "Z" + "-" * 63,
)

state_names: st.SearchStrategy[str] = st.one_of(
    st.sampled_from(SPECIAL_STATE_NAMES),
    st.from_regex(r"[A-Za-z][A-Za-z0-9_-]{0,8}", fullmatch=True),
    st.from_regex(r"[A-Za-z][A-Za-z0-9_-]{0,63}", fullmatch=True),
)

blueprint_names: st.SearchStrategy[str] = st.one_of(
    st.sampled_from((*DOT_KEYWORDS, "a-b", "x", "on", "null", "order-processing_2")),
    st.from_regex(r"[a-z][a-z0-9_-]{0,63}", fullmatch=True),
)

status_names: st.SearchStrategy[str] = st.one_of(
    st.sampled_from(("out_of_stock", "declined", "approve", "reject", "on", "yes", "null", "node")),
    st.from_regex(r"[a-z][a-z0-9_]{0,15}", fullmatch=True),
)

task_types: st.SearchStrategy[str] = st.from_regex(r"[A-Za-z0-9_.:-]{1,20}", fullmatch=True)

error_codes: st.SearchStrategy[str] = st.one_of(
    st.sampled_from(("TRANSIENT_ERROR", "TIMEOUT", "RATE_LIMITED")),
    st.from_regex(r"[A-Z][A-Z0-9_]{0,15}", fullmatch=True),
).filter(lambda code: code not in ("PERMANENT_ERROR", "INVALID_INPUT_ERROR"))

api_endpoints: st.SearchStrategy[str] = st.from_regex(
    r"[a-z0-9][a-z0-9_-]{0,8}(/[a-z0-9][a-z0-9_-]{0,8}){0,2}", fullmatch=True
)

# -- durations --------------------------------------------------------------------------

_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}

durations: st.SearchStrategy[int | float | str] = st.one_of(
    st.sampled_from(("500ms", "30s", "5m", "2h", "1d", "0s", "1.5s", "0.25h")),
    st.from_regex(r"[0-9]{1,6}(\.[0-9]{1,3})?(ms|s|m|h|d)", fullmatch=True),
    st.integers(min_value=0, max_value=10**7),
    st.floats(min_value=0, max_value=1e7, allow_nan=False, allow_infinity=False),
)


def duration_seconds(value: int | float | str) -> float:
    """Seconds for a generated duration (an oracle independent of engine.durations)."""
    if isinstance(value, str):
        unit = "ms" if value.endswith("ms") else value[-1]
        return float(value[: -len(unit)]) * _UNIT_SECONDS[unit]
    return float(value)


# -- JMESPath expressions ---------------------------------------------------------------

#: Text for string literals and quoted identifiers, with the characters that need escaping
#: in JMESPath, YAML and DOT.
_LITERAL_TEXT = st.text(
    alphabet=st.one_of(
        st.sampled_from("\"\\'`{}$ \n\t-é☃"),
        st.characters(exclude_categories=("Cs", "Cc")),
    ),
    max_size=6,
)
_IDENTIFIERS = st.one_of(
    st.sampled_from(("items", "priority", "x", "id", "node", "edge", "true", "null")),
    st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,8}", fullmatch=True),
)


def _raw_string(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _json_literal(value: Any) -> str:
    return "`" + json.dumps(value).replace("`", "\\`") + "`"


_identifier_or_quoted = st.one_of(_IDENTIFIERS, _LITERAL_TEXT.map(json.dumps))
_roots = st.one_of(
    st.sampled_from(("initial_data", "state_history", "job.id", "job.blueprint", "item", "@")),
    st.sampled_from(("index", "job")),
    state_names.map(lambda name: "steps." + (name if "-" not in name else json.dumps(name))),
)
_json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**6), max_value=10**6),
    _LITERAL_TEXT,
)
_literals = st.one_of(
    _LITERAL_TEXT.map(_raw_string),
    _json_scalars.map(_json_literal),
    st.lists(_json_scalars, max_size=3).map(_json_literal),
)
_simple_suffixes = st.one_of(
    _identifier_or_quoted.map(lambda name: "." + name),
    st.sampled_from(("[0]", "[-1]", "[*]", "[]", "[1:3]", "[::-1]", ".*", ".length")),
)


@st.composite
def _paths(draw: st.DrawFn) -> str:
    text = draw(_roots)
    for suffix in draw(st.lists(_simple_suffixes, max_size=3)):
        text += suffix
    if draw(st.booleans()) and draw(st.booleans()):
        field = draw(_IDENTIFIERS)
        literal = draw(_literals)
        text += f"[?{field} == {literal}]"
    return text


_FUNCTIONS_1 = ("length", "to_string", "to_number", "type", "keys", "abs", "not_null", "max")
_FUNCTIONS_2 = ("contains", "starts_with", "join", "not_null")
_COMPARATORS = ("==", "!=", "<", "<=", ">", ">=")
_SPACE = st.sampled_from(("", " ", " ", "  ", "\n", "\t", " \r\n "))


def _binary(children: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    ops = st.sampled_from((*_COMPARATORS, "&&", "||", "|"))
    return st.builds(lambda a, op, b, s: f"({a}{s}{op}{s}{b})", children, ops, children, _SPACE)


def _extend(children: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    keys = st.lists(_IDENTIFIERS, min_size=1, max_size=3, unique=True)
    return st.one_of(
        _binary(children),
        children.map(lambda a: f"!{a}"),
        children.map(lambda a: f"({a})"),
        st.builds(lambda f, a: f"{f}({a})", st.sampled_from(_FUNCTIONS_1), children),
        st.builds(
            lambda f, a, b: f"{f}({a}, {b})", st.sampled_from(_FUNCTIONS_2), children, children
        ),
        st.builds(lambda a, b: f"sort_by({a}, &{b})", children, _IDENTIFIERS),
        st.lists(children, min_size=1, max_size=3).map(lambda xs: "[" + ", ".join(xs) + "]"),
        st.builds(
            lambda ks, vs: "{" + ", ".join(f"{k}: {v}" for k, v in zip(ks, vs, strict=False)) + "}",
            keys,
            st.lists(children, min_size=3, max_size=3),
        ),
    )


#: Syntactically valid JMESPath expressions (their evaluation may still fail on some data).
expressions: st.SearchStrategy[str] = st.recursive(
    st.one_of(_paths(), _literals), _extend, max_leaves=5
)

# -- templates --------------------------------------------------------------------------

#: Literal template text: no `$`, so it can never start a `${` by accident.
_TEMPLATE_LITERAL = st.text(
    alphabet=st.characters(codec="utf-8", exclude_characters="$"), max_size=10
)
_EMBEDDED = st.builds(lambda s1, e, s2: "${" + s1 + e + s2 + "}", _SPACE, expressions, _SPACE)

template_strings: st.SearchStrategy[str] = st.one_of(
    _TEMPLATE_LITERAL,
    _EMBEDDED,
    st.lists(st.one_of(_TEMPLATE_LITERAL, _EMBEDDED, st.just("$${")), min_size=1, max_size=4).map(
        "".join
    ),
)
_finite = st.floats(allow_nan=False, allow_infinity=False)
_template_keys = st.one_of(
    st.sampled_from(("items", "url", "<<", "on", "${ x }", "=", "null", "~", "")),
    st.text(max_size=8),
)

#: Any JSON value whose strings are valid templates.
templates: st.SearchStrategy[Any] = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), _finite, template_strings),
    lambda children: st.one_of(
        st.lists(children, max_size=3),
        st.dictionaries(_template_keys, children, max_size=3),
    ),
    max_leaves=8,
)
template_mappings: st.SearchStrategy[dict[str, Any]] = st.dictionaries(
    _template_keys, templates, max_size=4
)

json_schemas: st.SearchStrategy[Any] = st.sampled_from(
    (
        True,
        False,
        {},
        {"type": "object"},
        {"type": "object", "required": ["items"], "properties": {"items": {"type": "array"}}},
        {"type": "array", "items": {"type": "integer", "minimum": 0}, "maxItems": 10},
        {"enum": [1, "a", None]},
        {"$defs": {"s": {"type": "string"}}, "$ref": "#/$defs/s"},
        {"anyOf": [{"type": "string", "pattern": "^[a-z]+$"}, {"type": "null"}]},
    )
).map(copy.deepcopy)  # a fresh copy each time: mutations change values in place

#: JSON Schemas that pass the draft 2020-12 meta-schema but are broken or unusable.
odd_json_schemas: st.SearchStrategy[Any] = st.sampled_from(
    (
        {"$ref": "#"},
        {"$defs": {"a": {"$ref": "#/$defs/a"}}, "$ref": "#/$defs/a"},
        {"$id": "x:", "$ref": "x:#"},
        {"$dynamicAnchor": "meta", "$dynamicRef": "#meta"},
        {"$ref": "#/$defs/missing"},
        {"$ref": "https://example.com/schema.json"},
        {"$schema": "http://json-schema.org/draft-04/schema#", "type": "object"},
        {"$id": "#fragment"},
        {"pattern": "("},
        {"type": "object", "properties": {"a": {"pattern": "[", "format": "regex"}}},
        {"allOf": [{"$ref": "#/allOf/0"}]},
    )
).map(copy.deepcopy)

# -- states -----------------------------------------------------------------------------

WORK_KINDS = ("task", "choice", "parallel", "wait", "approval", "listen", "subflow", "set")
#: How many distinct required targets a state of each kind can take (None: unlimited).
CAPACITY: dict[str, int | None] = {
    "task": None,
    "choice": None,
    "approval": None,
    "listen": 2,
    "parallel": 2,
    "subflow": 2,
    "wait": 1,
    "set": 1,
}


@st.composite
def retry_policies(draw: st.DrawFn) -> dict[str, Any]:
    policy: dict[str, Any] = {}
    if draw(st.booleans()):
        policy["max_attempts"] = draw(st.integers(min_value=1, max_value=1000))
    if draw(st.booleans()):
        policy["backoff"] = draw(st.sampled_from(("fixed", "linear", "exponential")))
    first, second = draw(durations), draw(durations)
    if duration_seconds(first) > duration_seconds(second):
        first, second = second, first
    if draw(st.booleans()):
        if draw(st.booleans()):
            policy["initial"], policy["max"] = first, second
        else:  # alone, `initial` must be at most the default maximum delay (5m)
            policy["initial"] = min(first, 300, key=duration_seconds)
    elif draw(st.booleans()):
        # alone, `max` must be at least the default initial delay (1s)
        policy["max"] = max(second, 1, key=duration_seconds)
    if draw(st.booleans()):
        policy["jitter"] = draw(st.floats(min_value=0, max_value=1))
    if draw(st.booleans()):
        policy["on"] = draw(st.lists(error_codes, min_size=1, max_size=3, unique=True))
    return policy


@st.composite
def timeouts(draw: st.DrawFn) -> dict[str, Any]:
    keys = draw(st.lists(st.sampled_from(("dispatch", "run", "heartbeat")), unique=True))
    return {key: draw(durations) for key in keys}


@st.composite
def task_fields(draw: st.DrawFn) -> dict[str, Any]:
    """`task`, and some of `params`, `priority`, `retry`, `timeouts`, `output_schema`."""
    fields: dict[str, Any] = {"task": draw(task_types)}
    if draw(st.booleans()):
        params = draw(template_mappings)
        if draw(st.booleans()):
            params["from_input"] = "${ initial_data." + draw(_IDENTIFIERS) + " }"
        fields["params"] = params
    if draw(st.booleans()):
        fields["priority"] = draw(st.integers(min_value=-1000, max_value=1000))
    if draw(st.booleans()):
        fields["retry"] = draw(retry_policies())
    if draw(st.booleans()):
        fields["timeouts"] = draw(timeouts())
    if draw(st.booleans()):
        fields["output_schema"] = draw(json_schemas)
    return fields


def _fill(
    draw: st.DrawFn, triggers: list[str], required: list[str], names: list[str]
) -> dict[str, str]:
    """Map triggers to targets: the required targets first, then random declared states."""
    assert len(triggers) >= len(required)
    targets = [*required, *(draw(st.sampled_from(names)) for _ in triggers[len(required) :])]
    return dict(zip(triggers, targets, strict=True))


@st.composite
def task_states(draw: st.DrawFn, required: list[str], names: list[str]) -> dict[str, Any]:
    state = draw(task_fields())
    others = st.one_of(st.sampled_from(("failure", "timeout")), status_names)
    extra = draw(
        st.lists(
            others.filter(lambda s: s != "success"),
            unique=True,
            min_size=len(required) - 1,
            max_size=len(required) + 1,
        )
    )
    on = _fill(draw, ["success", *extra], required, names)
    state["on"] = dict(draw(st.permutations(list(on.items()))))
    return state


@st.composite
def choice_states(draw: st.DrawFn, required: list[str], names: list[str]) -> dict[str, Any]:
    extra = draw(st.lists(st.sampled_from(names), max_size=2))
    targets = draw(st.permutations([*required, *extra]))
    otherwise = None
    if len(targets) > 1 and draw(st.booleans()):
        otherwise = targets.pop()
    state: dict[str, Any] = {
        "choice": [{"when": draw(expressions), "goto": target} for target in targets]
    }
    if otherwise is not None:
        state["otherwise"] = otherwise
    return state


@st.composite
def parallel_states(draw: st.DrawFn, required: list[str], names: list[str]) -> dict[str, Any]:
    spec: dict[str, Any]
    if draw(st.booleans()):
        branch_names = draw(st.lists(state_names, min_size=1, max_size=3, unique=True))
        spec = {"branches": {name: draw(task_fields()) for name in branch_names}}
    else:
        spec = {"for_each": draw(expressions), **draw(task_fields())}
        if draw(st.booleans()):
            spec["params"] = {"item": "${ item }", "index": "${index}", "both": "${item}-${index}"}
        if draw(st.booleans()):
            spec["max_concurrency"] = draw(st.integers(min_value=1, max_value=10**6))
    if draw(st.booleans()):
        spec["on_branch_failure"] = draw(st.sampled_from(("fail_fast", "collect")))
    triggers = ["success", "failure"][: max(len(required), draw(st.integers(1, 2)))]
    return {"parallel": spec, "on": _fill(draw, triggers, required, names)}


@st.composite
def wait_states(draw: st.DrawFn, required: list[str], names: list[str]) -> dict[str, Any]:
    wait: Any = draw(
        st.one_of(
            durations,
            st.sampled_from(
                (
                    {"until": "2030-01-01T00:00:00Z"},
                    {"until": "2030-01-31T09:00:00+02:00"},
                    {"until": "2030-06-01T12:30:00.250-05:30"},
                    {"until": "${ initial_data.deadline }"},
                )
            ),
        )
    )
    return {"wait": wait, "next": required[0]}


@st.composite
def approval_states(draw: st.DrawFn, required: list[str], names: list[str]) -> dict[str, Any]:
    approval: dict[str, Any] = {}
    if draw(st.booleans()):
        approval["message"] = draw(template_strings)
    with_timeout = draw(st.booleans())
    decisions = draw(
        st.lists(
            status_names.filter(lambda s: s != "timeout"),
            unique=True,
            min_size=max(1, len(required) - with_timeout),
            max_size=len(required) + 1,
        )
    )
    triggers = [*decisions, "timeout"] if with_timeout else decisions
    if with_timeout:
        approval["timeout"] = draw(durations)
    on = _fill(draw, draw(st.permutations(triggers)), required, names)
    return {"approval": approval, "on": on}


@st.composite
def listen_states(draw: st.DrawFn, required: list[str], names: list[str]) -> dict[str, Any]:
    listen: dict[str, Any] = {"event": draw(status_names)}
    if draw(st.booleans()):
        listen["schema"] = draw(json_schemas)
    triggers = ["received", "timeout"][: max(len(required), draw(st.integers(1, 2)))]
    if "timeout" in triggers:
        listen["timeout"] = draw(durations)
    return {"listen": listen, "on": _fill(draw, triggers, required, names)}


@st.composite
def subflow_states(
    draw: st.DrawFn, required: list[str], names: list[str], own_name: str
) -> dict[str, Any]:
    subflow: dict[str, Any] = {"blueprint": draw(st.one_of(st.just(own_name), blueprint_names))}
    if draw(st.booleans()):
        subflow["input"] = draw(templates)
    triggers = ["success", "failure"][: max(len(required), draw(st.integers(1, 2)))]
    return {"subflow": subflow, "on": _fill(draw, triggers, required, names)}


@st.composite
def set_states(draw: st.DrawFn, required: list[str], names: list[str]) -> dict[str, Any]:
    values = draw(st.dictionaries(_template_keys, templates, min_size=1, max_size=4))
    return {"set": values, "next": required[0]}


@st.composite
def end_states(draw: st.DrawFn) -> dict[str, Any]:
    outcome = draw(st.sampled_from(("finished", "failed")))
    state: dict[str, Any] = {"end": outcome}
    if draw(st.booleans()):
        state["output"] = draw(templates)
    if outcome == "failed" and draw(st.booleans()):
        error: dict[str, Any] = {}
        if draw(st.booleans()):
            error["code"] = draw(st.one_of(error_codes, template_strings))
        if draw(st.booleans()):
            error["message"] = draw(template_strings)
        state["error"] = error
    return state


def _work_state(
    draw: st.DrawFn, kind: str, required: list[str], names: list[str], own_name: str
) -> dict[str, Any]:
    if kind == "task":
        return draw(task_states(required, names))
    if kind == "choice":
        return draw(choice_states(required, names))
    if kind == "parallel":
        return draw(parallel_states(required, names))
    if kind == "wait":
        return draw(wait_states(required, names))
    if kind == "approval":
        return draw(approval_states(required, names))
    if kind == "listen":
        return draw(listen_states(required, names))
    if kind == "subflow":
        return draw(subflow_states(required, names, own_name))
    assert kind == "set"
    return draw(set_states(required, names))


@st.composite
def blueprint_dicts(draw: st.DrawFn, max_work_states: int = 6) -> dict[str, Any]:
    """A random valid blueprint as plain data (see the module docstring for the shape)."""
    n_work = draw(st.integers(min_value=1, max_value=max_work_states))
    n_end = draw(st.integers(min_value=1, max_value=3))
    names = draw(
        st.lists(state_names, min_size=n_work + n_end, max_size=n_work + n_end, unique=True)
    )
    kinds = draw(st.lists(st.sampled_from(WORK_KINDS), min_size=n_work, max_size=n_work))
    required = [[names[i + 1]] for i in range(n_work)]  # the chain towards names[n_work]
    for end in names[n_work + 1 :]:
        open_ = [i for i in range(n_work) if (CAPACITY[kinds[i]] or 99) > len(required[i])]
        if open_:
            i = draw(st.sampled_from(open_))
        else:
            i = draw(st.integers(min_value=0, max_value=n_work - 1))
            kinds[i] = "task"
        required[i].append(end)
    own_name = draw(blueprint_names)
    bodies: dict[str, dict[str, Any]] = {}
    for i, name in enumerate(names):
        body = _work_state(draw, kinds[i], required[i], names, own_name) if i < n_work else None
        if body is None:
            body = draw(end_states())
        if draw(st.integers(min_value=0, max_value=3)) == 0:
            body = {"description": draw(st.text(max_size=20)), **body}
        bodies[name] = body
    _share_a_field(draw, list(bodies.values()))
    order = draw(st.permutations(names))
    data: dict[str, Any] = {"blueprint": own_name}
    if draw(st.booleans()):
        data["version"] = draw(st.integers(min_value=1, max_value=10**9))
    if draw(st.booleans()):
        data["description"] = draw(st.text(max_size=30))
    if draw(st.booleans()):
        data["api_endpoint"] = draw(api_endpoints)
    if draw(st.booleans()):
        data["input_schema"] = draw(json_schemas)
    if draw(st.booleans()):
        limits = {"max_transitions": draw(st.integers(min_value=1, max_value=10**6))}
        data["limits"] = draw(st.sampled_from(({}, limits)))
    data["start"] = names[0]
    data["states"] = {name: bodies[name] for name in order}
    return dict(draw(st.permutations(list(data.items()))))


def _share_a_field(draw: st.DrawFn, bodies: list[dict[str, Any]]) -> None:
    """Sometimes give two task specs the very same retry/timeouts/params object, which
    yaml.safe_dump writes as an anchor (`&id001`) and an alias (`*id001`)."""
    specs = [body for body in bodies if "task" in body]
    for body in bodies:
        spec = body.get("parallel", {})
        specs.extend(spec.get("branches", {}).values())
        if "for_each" in spec:
            specs.append(spec)
    if len(specs) < 2 or not draw(st.booleans()):
        return
    first, second = draw(st.lists(st.sampled_from(range(len(specs))), min_size=2, max_size=2))
    for field in ("retry", "timeouts", "params", "output_schema"):
        if field in specs[first]:
            specs[second][field] = specs[first][field]
            return


def dict_edges(data: dict[str, Any]) -> Counter[tuple[str, str]]:
    """(source, target) of every transition a valid blueprint dict declares."""
    edges: Counter[tuple[str, str]] = Counter()
    for name, body in data["states"].items():
        targets: list[str] = []
        if "next" in body:
            targets.append(body["next"])
        targets.extend(body.get("on", {}).values())
        targets.extend(rule["goto"] for rule in body.get("choice", []))
        if "otherwise" in body:
            targets.append(body["otherwise"])
        edges.update((name, target) for target in targets)
    return edges


@st.composite
def yaml_dumps(draw: st.DrawFn, data: Any, *, faithful: bool = True) -> str:
    """`data` as YAML in a random style; with `faithful`, only text that PyYAML's own
    safe_load reads back as `data`.

    PyYAML's emitter is not always faithful: folding a long double-quoted string that holds
    escapes, or writing U+0085 (NEL) raw with allow_unicode, can give text that reads back
    as a different string. Such text says nothing about the engine, so it is not used.
    """
    text = yaml.safe_dump(
        data,
        sort_keys=False,
        allow_unicode=draw(st.booleans()),
        default_flow_style=draw(st.sampled_from((False, None, True))),
        width=draw(st.sampled_from((80, 20, 10**9))),
        indent=draw(st.sampled_from((2, 4))),
    )
    if faithful and yaml.safe_load(text) != data:
        text = yaml.safe_dump(data, sort_keys=False, width=10**9)
        assume(yaml.safe_load(text) == data)
    return text


# -- raw material for fuzzing -----------------------------------------------------------

#: Arbitrary YAML-representable values (NaN and infinities included).
yaml_values: st.SearchStrategy[Any] = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=10)),
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(st.text(max_size=8), children, max_size=4),
    ),
    max_leaves=12,
)

STATE_FIELDS = (
    *WORK_KINDS,
    *_words("end on next otherwise params priority retry timeouts output_schema"),
    *_words("output error description"),
)
_SUB_FIELDS = _words(
    """max_attempts backoff initial max jitter on run dispatch heartbeat until timeout
    message blueprint input branches for_each task params when goto success failure code
    max_concurrency on_branch_failure"""
)
_shaped_leaf = st.one_of(yaml_values, state_names, durations, expressions, template_strings)
_shaped_value: st.SearchStrategy[Any] = st.recursive(
    _shaped_leaf,
    lambda children: st.one_of(
        st.lists(children, max_size=3),
        st.dictionaries(st.one_of(st.sampled_from(_SUB_FIELDS), state_names), children, max_size=4),
    ),
    max_leaves=10,
)

#: Values shaped like a blueprint (the right top-level keys, states with kind keys) whose
#: fields hold anything.
blueprint_shaped_values: st.SearchStrategy[Any] = st.fixed_dictionaries(
    {
        "blueprint": st.one_of(blueprint_names, yaml_values),
        "start": st.one_of(state_names, yaml_values),
        "states": st.dictionaries(
            state_names,
            st.dictionaries(st.sampled_from(STATE_FIELDS), _shaped_value, max_size=4),
            max_size=4,
        ),
    },
    optional={
        "version": yaml_values,
        "input_schema": st.one_of(json_schemas, odd_json_schemas, _shaped_value),
        "limits": _shaped_value,
        "api_endpoint": st.one_of(api_endpoints, yaml_values),
    },
)

_YAML_SCALARS = st.one_of(
    st.sampled_from(
        (
            *_words("a blueprint start states task on end finished yes ~ null true abc 30s"),
            *_words("1e3 .inf .nan 0x1F 0o17 1:20 2001-12-14 = -1 0 1.5 '' \"\""),
            '"\\x00"',
            '"\\ud800"',
            "'${ x }'",
        )
    ),
    _IDENTIFIERS,
)
#: Tags a YAML node may carry (most of them unusable for a blueprint, some unknown).
_YAML_TAGS = st.sampled_from(
    (
        "",
        "",
        "",
        *(
            f"{tag} "
            for tag in _words("""!!str !!int !!float !!bool !!null !!timestamp !!binary !!set
            !!omap !!pairs !!seq !!map !foo !!python/object/apply:os.getcwd
            !<tag:yaml.org,2002:str>""")
        ),
    )
)
_FLOW_KEYS = st.one_of(
    st.just("<<"),
    st.sampled_from(("? a", "? [a]", "'<<'", "[a, b]", "{a: b}")),
    _YAML_SCALARS,
)
_YAML_NOISE = st.sampled_from(
    (
        *_words(": - [ ] { } , # | >- ' \" \\ ? *a &a"),
        ": ",
        "- ",
        "<<: ",
        "\n",
        "\n  ",
        "\t",
        "\r",
        "---\n",
        "...\n",
        "%YAML 1.2\n---\n",
        "%TAG !e! tag:example.com,2000:\n---\n",
        "\ufeff",
        "\x85",
        "\u2028",
        "\x00",
    )
)


@st.composite
def _flow_node(draw: st.DrawFn, anchors: list[str], depth: int = 0) -> str:
    """A YAML flow node. `anchors` lists the anchors defined so far in the document, those
    of the enclosing nodes included, so an alias may point into the node that holds it; a
    collection with a `<<` key then merges itself (a cycle)."""
    kind = draw(st.integers(min_value=0, max_value=4 if depth < 3 else 1))
    if kind == 1 and anchors:
        return "*" + draw(st.sampled_from(anchors))
    prefix = draw(_YAML_TAGS)
    if draw(st.booleans()):
        anchors.append(f"a{len(anchors)}")
        prefix = f"&{anchors[-1]} {prefix}"
    if kind <= 1:
        return prefix + draw(_YAML_SCALARS)
    size = draw(st.integers(min_value=0, max_value=3))
    if kind == 2:
        return (
            prefix
            + "["
            + ", ".join(draw(_flow_node(anchors, depth + 1)) for _ in range(size))
            + "]"
        )
    pairs = [f"{draw(_FLOW_KEYS)}: {draw(_flow_node(anchors, depth + 1))}" for _ in range(size)]
    return prefix + "{" + ", ".join(pairs) + "}"


@st.composite
def yamlish_texts(draw: st.DrawFn) -> str:
    """YAML documents, mostly well formed, full of anchors, aliases (also inside the node
    that carries the anchor), merge keys and tags; some with YAML punctuation spliced in,
    some a mere soup of YAML tokens."""
    if draw(st.integers(min_value=0, max_value=4)) == 0:
        tokens = st.one_of(_YAML_NOISE, _YAML_TAGS, _YAML_SCALARS, _FLOW_KEYS)
        return "".join(draw(st.lists(tokens, max_size=20)))
    anchors: list[str] = []
    lines: list[str] = []
    for _ in range(draw(st.integers(min_value=0, max_value=5))):
        key = draw(_FLOW_KEYS)
        form = draw(st.integers(min_value=0, max_value=3))
        if form <= 1:
            lines.append(f"{key}: {draw(_flow_node(anchors))}")
            continue
        anchor = ""
        if draw(st.booleans()):
            anchors.append(f"a{len(anchors)}")
            anchor = f" &{anchors[-1]}"
        lines.append(f"{key}:{anchor}")
        for _ in range(draw(st.integers(min_value=0, max_value=3))):
            if form == 2:
                lines.append(f"  - {draw(_flow_node(anchors, 1))}")
            else:
                lines.append(f"  {draw(_FLOW_KEYS)}: {draw(_flow_node(anchors, 1))}")
    text = "\n".join(lines)
    if draw(st.integers(min_value=0, max_value=2)) == 0:
        for _ in range(draw(st.integers(min_value=1, max_value=3))):
            where = draw(st.integers(min_value=0, max_value=len(text)))
            text = text[:where] + draw(_YAML_NOISE) + text[where:]
    return text


# -- mutations of valid blueprints -------------------------------------------------------

Location = tuple[Any, Any]  # (container, key or index)


def _locations(value: Any) -> list[Location]:
    """Every (container, key) below `value`, depth first."""
    found: list[Location] = []
    items: list[tuple[Any, Any]] = []
    if isinstance(value, dict):
        items = list(value.items())
    elif isinstance(value, list):
        items = list(enumerate(value))
    for key, child in items:
        found.append((value, key))
        found.extend(_locations(child))
    return found


def _transition_locations(data: dict[str, Any]) -> list[Location]:
    found: list[Location] = [(data, "start")] if "start" in data else []
    states = data.get("states")
    for body in states.values() if isinstance(states, dict) else []:
        if not isinstance(body, dict):
            continue
        found.extend((body, key) for key in ("next", "otherwise") if key in body)
        if isinstance(body.get("on"), dict):
            found.extend((body["on"], key) for key in body["on"])
        for rule in body.get("choice", []) if isinstance(body.get("choice"), list) else []:
            if isinstance(rule, dict) and "goto" in rule:
                found.append((rule, "goto"))
    return found


_odd_values: st.SearchStrategy[Any] = st.one_of(
    yaml_values,
    odd_json_schemas,
    st.sampled_from(
        (
            float("nan"),
            float("inf"),
            -1,
            -0.5,
            10**40,
            10**400,
            1e300,
            [[1]],
            [{}],
            {"a": [1]},
            "",
            "${",
            "${ }",
            "${ a ] }",
            "${ length(`1`) }",
            "PERMANENT_ERROR",
            "1x",
            "1e3s",
            "99999999999d",
            "not a date",
            "2030-01-01T00:00:00",
            "2030-02-30T00:00:00Z",
        )
    ),
).map(copy.deepcopy)
_odd_keys: st.SearchStrategy[Any] = st.one_of(
    st.sampled_from(STATE_FIELDS + _SUB_FIELDS),
    state_names,
    st.text(max_size=8),
    st.integers(),
    st.booleans(),
    st.none(),
)


def _type_of(value: Any) -> type[Any]:
    return bool if isinstance(value, bool) else type(value)


def _values_unlike(value: Any) -> st.SearchStrategy[Any]:
    """Odd values of another type than `value`."""
    old = _type_of(value)
    return _odd_values.filter(lambda new: _type_of(new) is not old)


def _pick(draw: st.DrawFn, items: list[T]) -> T:
    """One of `items`, drawn by index: `sampled_from` would show every item in reports."""
    return items[draw(st.integers(min_value=0, max_value=len(items) - 1))]


@st.composite
def mutated_blueprints(draw: st.DrawFn) -> dict[str, Any]:
    """A valid blueprint with one to three random mutations (usually no longer valid).

    Half of the mutations pick a location anywhere in the blueprint, the other half one
    inside a randomly chosen state, so that deep fields (retry policies, timeouts, choice
    rules, branches) are hit as often as top-level ones."""
    data = copy.deepcopy(draw(blueprint_dicts(max_work_states=4)))
    for _ in range(draw(st.integers(min_value=1, max_value=3))):
        how = draw(st.sampled_from(("drop", "retype", "retarget", "insert", "schema")))
        states = data.get("states")
        if isinstance(states, dict) and states and draw(st.booleans()):
            within = states[draw(st.sampled_from(list(states)))]
        else:
            within = data
        everywhere = _locations(within)
        if how == "drop" and everywhere:
            container, key = _pick(draw, everywhere)
            del container[key]
        elif how == "retype" and everywhere:
            container, key = _pick(draw, everywhere)
            container[key] = draw(_values_unlike(container[key]))
        elif how == "retarget":
            spots = _transition_locations(data)
            if spots:
                container, key = _pick(draw, spots)
                names = list(states) if isinstance(states, dict) and states else ["x"]
                container[key] = draw(
                    st.one_of(st.sampled_from(names), state_names, st.text(max_size=6))
                )
        elif how == "schema":
            schema = draw(st.one_of(odd_json_schemas, json_schemas))
            spots = [(c, k) for c, k in _locations(data) if k == "output_schema"]
            container, key = _pick(draw, [(data, "input_schema"), *spots])
            container[key] = schema
        else:
            dicts = [within] + [c[k] for c, k in everywhere if isinstance(c[k], dict)]
            target = _pick(draw, dicts)
            if isinstance(target, dict):
                target[draw(_odd_keys)] = draw(_odd_values)
    return data
