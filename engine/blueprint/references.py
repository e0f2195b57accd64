"""What the expressions of a compiled blueprint read, checked against what is known.

Every JMESPath field chain an expression reads from the job context (`initial_data.x`,
`steps.S.y`, `item.z`, ...) is checked against the declared shapes: `input_schema`, each
state's `output_schema` (or what a `set`, a parallel state or an approval leaves), the
`for_each` list's item schema. A field the schema does not declare is a warning with a
"did you mean"; so is `steps.S` read in a state that some path from `start` reaches without
passing S (the warning names that path).

The AST is walked generically: a node type or a function this module does not know is read
through its children, so new JMESPath functions cannot break the checks. A schema whose
shape cannot be read simply (combinators, `$ref`, `patternProperties`, no declared
properties) is taken as "anything", never as a reason to warn.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import networkx as nx

from engine.blueprint.model import (
    ApprovalState,
    Blueprint,
    ParallelState,
    SetState,
    State,
    TaskState,
)
from engine.blueprint.schema import did_you_mean
from engine.blueprint.yamlsource import Path
from engine.expressions import (
    Expression,
    Interpolated,
    ListTemplate,
    MappingTemplate,
    Template,
    Whole,
)

Chain = tuple[str, ...]  # field names from the context's root; "[]" stands for any element
Warning_ = tuple[Path, str]

ROOTS = ("initial_data", "state_history", "steps", "job")
JOB_FIELDS = {"id", "blueprint", "version"}
_OPAQUE = ("allOf", "anyOf", "oneOf", "$ref", "$dynamicRef", "patternProperties", "if", "not")
_BRANCH_NAMES = {
    "item": "the task fields of a `for_each` parallel state",
    "index": "the task fields of a parallel state",
    "branch": "the task fields of a parallel state's `branches`",
}
_NOTHING_RECORDED = {"choice", "wait", "end"}  # kinds that leave nothing in `steps`

_RACE_FIELDS = ("branch", "result", "error")


# -- reading an expression's field chains ---------------------------------------------------


def chains(expression: Expression) -> list[Chain]:
    """Every field chain the expression reads from the root context, prefixes included."""
    found: list[Chain] = []
    _resolve(expression.parsed.parsed, (), found)
    return found


def result_chain(expression: Expression) -> Chain | None:
    """The chain the expression's value comes from, when it is a plain path (`a.b[0].c`)."""
    return _resolve(expression.parsed.parsed, (), [])


def _resolve(node: Any, here: Chain | None, found: list[Chain]) -> Chain | None:
    """Record the chains `node` reads when evaluated at `here` (None: somewhere unknown);
    return the chain of its value, or None if it is not a plain path."""
    if not isinstance(node, dict):
        return None
    kind = node.get("type")
    children = node.get("children") or []
    if kind == "field":
        if here is None:
            return None
        chain = (*here, str(node.get("value")))
        found.append(chain)
        return chain
    if kind in ("current", "identity"):
        return here
    if kind in ("subexpression", "pipe") and children:  # each child reads the last's value
        for child in children:
            here = _resolve(child, here, found)
        return here
    if kind in ("index_expression", "flatten") and children:
        left = _resolve(children[0], here, found)
        for child in children[1:]:
            _resolve(child, None, found)
        return (*left, "[]") if left is not None else None
    if kind in ("projection", "filter_projection") and len(children) >= 2:
        left = _resolve(children[0], here, found)
        element = (*left, "[]") if left is not None and left[-1:] != ("[]",) else left
        for child in children[2:]:  # the filter's condition, on each element
            _resolve(child, element, found)
        _resolve(children[1], element, found)
        if kind == "projection" and children[1].get("type") == "identity" and left:
            return left[:-1] if left[-1] == "[]" else left  # `a[]`: the list a, flattened
        return None
    if kind == "value_projection" and len(children) >= 2:
        _resolve(children[0], here, found)
        _resolve(children[1], None, found)  # on each value of an object: unknown keys
        return None
    if kind == "expref":  # evaluated by a function on values it chooses
        for child in children:
            _resolve(child, None, found)
        return None
    for child in children:  # comparators, and/or/not, functions, multi-selects, any new kind
        _resolve(child, here, found)
    return None


def template_expressions(template: Template, path: Path) -> Iterator[tuple[Path, Expression]]:
    """Every expression of a compiled template, with the path of the value holding it."""
    if isinstance(template, Whole):
        yield path, template.expression
    elif isinstance(template, Interpolated):
        for part in template.parts:
            if isinstance(part, Expression):
                yield path, part
    elif isinstance(template, MappingTemplate):
        for key, value in template.items:
            yield from template_expressions(value, (*path, key))
    elif isinstance(template, ListTemplate):
        for i, value in enumerate(template.items):
            yield from template_expressions(value, (*path, i))


# -- schemas -------------------------------------------------------------------------------


def _fields(schema: Any) -> set[str] | None:
    """The field names an object schema declares, or None when any may be there."""
    if not isinstance(schema, Mapping) or any(key in schema for key in _OPAQUE):
        return None
    properties = schema.get("properties")
    names = set(properties) if isinstance(properties, Mapping) else set()
    required = schema.get("required")
    if isinstance(required, list):
        names.update(name for name in required if isinstance(name, str))
    return names or None


def _below(schema: Any, segment: str) -> Any:
    if not isinstance(schema, Mapping):
        return None
    if segment == "[]":
        return schema.get("items")
    properties = schema.get("properties")
    return properties.get(segment) if isinstance(properties, Mapping) else None


def _unknown_field(schema: Any, rest: Chain) -> tuple[str, set[str]] | None:
    """The first field of `rest` that `schema` does not declare (with those it does)."""
    for segment in rest:
        if segment != "[]":
            names = _fields(schema)
            if names is not None and segment not in names:
                return segment, names
        schema = _below(schema, segment)
        if schema is None:
            return None
    return None


def _text(chain: Chain) -> str:
    return ".".join(chain).replace(".[]", "[]")


# -- the checks ------------------------------------------------------------------------------


class _Checker:
    def __init__(self, blueprint: Blueprint) -> None:
        self.bp = blueprint
        self.raw_states: Mapping[str, Any] = blueprint.raw.get("states") or {}
        self.warnings: dict[Warning_, None] = {}  # ordered, without repeats
        self.avoiding: dict[tuple[str, str], list[str] | None] = {}

    def warn(self, path: Path, message: str) -> None:
        self.warnings[(path, message)] = None

    def check(self, path: Path, expression: Expression) -> None:
        state = self.bp.states.get(str(path[1])) if len(path) > 1 and path[0] == "states" else None
        if state is None:
            return
        scope = self._scope(state, path)
        for chain in chains(expression):
            root = chain[0]
            if root in scope:
                self._item(path, scope[root], chain)
            elif root in _BRANCH_NAMES:
                self.warn(path, f"`{root}` is set only in {_BRANCH_NAMES[root]}")
            elif root not in ROOTS:
                known = [*ROOTS, *scope]
                self.warn(
                    path,
                    f"`{root}` is not in the job context (expressions here see "
                    f"{', '.join(known)}){did_you_mean(root, known)}",
                )
            elif root == "initial_data":
                self._against(path, chain, self.bp.input_schema, "the input_schema")
            elif root == "job" and len(chain) > 1 and chain[1] not in JOB_FIELDS:
                hint = did_you_mean(chain[1], JOB_FIELDS)
                self.warn(path, f"`{_text(chain[:2])}`: job has only id, blueprint, version{hint}")
            elif root == "steps" and len(chain) > 1:
                self._step(path, state, chain)

    def _scope(self, state: State, path: Path) -> dict[str, Any]:
        """The names a parallel state's task adds to the context, each with its schema."""
        if not isinstance(state, ParallelState) or len(path) < 4 or path[2] != "parallel":
            return {}
        if path[3] == "branches":
            return {"index": None, "branch": None, "item": None}
        if state.for_each is not None and path[3] not in ("for_each", "branches"):
            return {"item": self._item_schema(state.for_each), "index": None}
        return {}

    def _item_schema(self, for_each: Expression) -> Any:
        chain = result_chain(for_each)
        if not chain:
            return None
        if chain[0] == "initial_data":
            schema = self.bp.input_schema
        elif chain[0] == "steps" and len(chain) > 1 and chain[1] in self.bp.states:
            schema = self._output_schema(chain[1])
            chain = chain[1:]
        else:
            return None
        for segment in chain[1:]:
            schema = _below(schema, segment)
        return _below(schema, "[]")

    def _item(self, path: Path, schema: Any, chain: Chain) -> None:
        if chain[0] == "item" and schema is not None:
            self._against(path, chain, schema, "the for_each list's item schema")

    def _against(self, path: Path, chain: Chain, schema: Any, what: str, skip: int = 1) -> None:
        """Warn if `schema` does not declare the fields of `chain` after the first `skip`."""
        found = _unknown_field(schema, chain[skip:])
        if found is not None:
            name, names = found
            self.warn(
                path,
                f"`{_text(chain)}`: {what} declares no field {name!r}{did_you_mean(name, names)}",
            )

    def _output_schema(self, name: str) -> Any:
        raw = self.raw_states.get(name)
        return raw.get("output_schema") if isinstance(raw, Mapping) else None

    def _step(self, path: Path, here: State, chain: Chain) -> None:
        name = chain[1]
        source = self.bp.states.get(name)
        if source is None:
            hint = did_you_mean(name, self.bp.states)
            self.warn(path, f"`steps.{name}`: there is no state {name!r}{hint}")
            return
        if source.kind in _NOTHING_RECORDED:
            self.warn(path, f"`steps.{name}`: a {source.kind} state leaves nothing in steps")
            return
        self._ran_before(path, here, name)
        rest = chain[2:]
        if isinstance(source, TaskState):
            schema = self._output_schema(name)
            self._against(path, chain, schema, f"the output_schema of {name!r}", skip=2)
        elif isinstance(source, ParallelState) and source.compete and rest:
            # A race leaves {branch, result} (or {error} when every branch failed).
            if rest[0] not in _RACE_FIELDS:
                self.warn(
                    path,
                    f"`{_text(chain[:3])}`: race {name!r} leaves only branch, result or error"
                    f"{did_you_mean(rest[0], _RACE_FIELDS)}",
                )
        elif isinstance(source, ParallelState) and source.branches and rest:
            names = [branch for branch, _ in source.branches]
            if rest[0] not in names:
                self.warn(
                    path,
                    f"`{_text(chain[:3])}`: state {name!r} has no branch {rest[0]!r}"
                    f"{did_you_mean(rest[0], names)}",
                )
        elif isinstance(source, SetState) and rest:
            raw = self.raw_states.get(name, {}).get("set")
            if isinstance(raw, Mapping) and rest[0] not in raw:
                self.warn(
                    path,
                    f"`{_text(chain[:3])}`: set state {name!r} sets no {rest[0]!r}"
                    f"{did_you_mean(rest[0], raw)}",
                )
        elif isinstance(source, ApprovalState) and rest:
            fields = ("decision", "by", "at")
            if rest[0] not in fields:
                self.warn(
                    path,
                    f"`{_text(chain[:3])}`: an approval leaves decision, by and at"
                    f"{did_you_mean(rest[0], fields)}",
                )
        # A subflow leaves its child's output: its shape is the child blueprint's business.

    def _ran_before(self, path: Path, here: State, name: str) -> None:
        if name == here.name or name == self.bp.start:
            return
        key = (here.name, name)
        if key not in self.avoiding:
            graph = self.bp.graph
            without = nx.restricted_view(graph, [name], [])
            try:
                self.avoiding[key] = nx.shortest_path(without, self.bp.start, here.name)
            except nx.NetworkXNoPath:
                self.avoiding[key] = None
        avoiding = self.avoiding[key]
        if avoiding is not None:
            self.warn(
                path,
                f"`steps.{name}` may be unset here: state {name!r} does not run on the path "
                f"{' -> '.join(avoiding)}",
            )


def reference_warnings(
    blueprint: Blueprint,
    expressions: Mapping[Path, Expression],
    templates: Mapping[Path, Template],
) -> list[Warning_]:
    """(path, message) for every field reference that what is declared contradicts."""
    checker = _Checker(blueprint)
    for path, expression in expressions.items():
        checker.check(path, expression)
    for base, template in templates.items():
        for path, expression in template_expressions(template, base):
            checker.check(path, expression)
    return list(checker.warnings)
