"""JMESPath expressions and `${ }` templates, compiled once and evaluated many times.

A template is any JSON value. A string that is exactly `${ expr }` evaluates to the
expression's value with its type; `${ expr }` inside a longer string is replaced by the
value as text (strings as they are, anything else as compact JSON); `$${` is a literal `${`.
Compilation happens when a blueprint is loaded, so a job never parses an expression.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import jmespath
import jmespath.exceptions
import jmespath.parser
import jmespath.visitor

from engine import functions
from engine.errors import ExpressionError

# Interlock's functions (engine/functions.py) next to JMESPath's own.
_OPTIONS = jmespath.Options(dict_cls=dict, custom_functions=functions.FUNCTIONS)

#: What one search may cost: a step per node visited (a projection or filter visits its
#: expression once per element) plus, for each function call, the length of each list,
#: object or string it is given or gives back (`sort_by`, `to_string`, `join` ... cost in
#: proportion; a string counts a step per CHARS_PER_STEP characters), plus the length of
#: each list a flatten (`[]`) copies. A linear expression over the largest request (1 MiB:
#: at most about 75,000 objects) takes a few hundred thousand; the budget is spent in about
#: a second on a loaded 2-core machine (tests/security/test_expression_cost.py).
MAX_STEPS = 1_000_000
CHARS_PER_STEP = 16  # a string is handled in C: its characters cost far less than a visit

#: The largest value a search may build, in bytes of compact JSON (counted, not encoded:
#: a string by its characters, a number, true, false or null as SCALAR_BYTES). Few steps
#: can build a huge value from shared parts (`[@, @]`, piped 30 times, is 2^30 copies of
#: the input), which would then take that much memory as JSON. A value the search only
#: reads (`initial_data.items`) is not counted: it is the job's own data. Eight times the
#: largest request (MAX_BODY_BYTES' default, 1 MiB).
MAX_RESULT_BYTES = 8 << 20
SCALAR_BYTES = 5

# The nodes that build a new value (the others hand on one they were given or read).
_BUILDERS = frozenset(
    {
        "multi_select_list",
        "multi_select_dict",
        "projection",
        "value_projection",
        "filter_projection",
        "flatten",
        "slice",
        "function_expression",
    }
)


class OverBudget(ExpressionError):
    """A search went past MAX_STEPS."""


class TooLarge(ExpressionError):
    """A search built a value of more than MAX_RESULT_BYTES."""


class _BudgetedInterpreter(jmespath.visitor.TreeInterpreter):  # type: ignore[misc]  # untyped
    """jmespath's interpreter, counting steps against a budget reset by each search (the
    engine evaluates on one thread: the event loop's)."""

    def __init__(self) -> None:
        super().__init__(_OPTIONS)
        self.left = MAX_STEPS
        # The lists and objects this search built, by id (kept, so that no id is reused
        # while it runs), and the size of each list or object it measured, by id (built, or
        # part of the context, which outlives the search). Emptied after each search.
        self.built: dict[int, Any] = {}
        self.sizes: dict[int, int] = {}

    def visit(self, node: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
        self.left -= 1
        if self.left < 0:
            raise OverBudget(f"took more than {MAX_STEPS:,} steps (MAX_STEPS)")
        kind = node["type"]
        method = self._method_cache.get(kind)
        if method is None:
            method = getattr(self, f"visit_{kind}", self.default_visit)
            self._method_cache[kind] = method
        value = method(node, *args, **kwargs)
        if kind in _BUILDERS and isinstance(value, list | dict):
            self.built[id(value)] = value
        return value

    def check_built(self, value: Any) -> None:
        """Measure `value` if this search built it (TooLarge past MAX_RESULT_BYTES): before
        it is the result, a function's argument or compared, the three ways a value of
        shared parts would be encoded or walked copy by copy. Building one only links parts
        (what it costs is counted in steps)."""
        if id(value) in self.built:
            self.size(value)

    def size(self, value: Any) -> int:
        """`value`'s size as compact JSON, about; TooLarge past MAX_RESULT_BYTES. Each list
        or object is measured once a search, so a value built of one part many times costs
        a look per distinct part, not per copy."""
        kind = type(value)
        if kind is not list and kind is not dict:
            return len(value) + 2 if isinstance(value, str) else SCALAR_BYTES
        known = self.sizes.get(id(value))
        if known is not None:
            return known
        total = 1 + len(value)  # brackets and commas (one more, for an empty one)
        nested = False
        for item in value if kind is list else value.values():
            inner = type(item)
            if inner is str:
                total += len(item) + 2
            elif inner is list or inner is dict:
                total += self.size(item)
                nested = True
            else:
                total += len(item) + 2 if isinstance(item, str) else SCALAR_BYTES
        if kind is dict:
            total += sum(map(len, value)) + 3 * len(value)  # keys, their quotes and colon
        if total > MAX_RESULT_BYTES:
            raise TooLarge(
                f"built a value of more than {MAX_RESULT_BYTES:,} bytes (MAX_RESULT_BYTES)"
            )
        if nested:  # (one of scalars only is measured again faster than remembered)
            self.sizes[id(value)] = total
        return total

    def visit_function_expression(self, node: dict[str, Any], value: Any) -> Any:
        args = [self.visit(child, value) for child in node["children"]]
        for arg in args:
            self.check_built(arg)
        self.charge(args)
        result = self._functions.call_function(node["value"], args)
        self.charge([result])
        return result

    def visit_comparator(self, node: dict[str, Any], value: Any) -> Any:
        sides = [self.visit(child, value) for child in node["children"]]
        for side in sides:
            self.check_built(side)
        given = [{"type": "literal", "value": side} for side in sides]
        return super().visit_comparator({"value": node["value"], "children": given}, value)

    def visit_flatten(self, node: dict[str, Any], value: Any) -> Any:
        base = self.visit(node["children"][0], value)
        if not isinstance(base, list):
            return None
        self.charge(base)  # each element's length: what extend() copies
        return super().visit_flatten({"children": [{"type": "identity"}]}, base)

    def charge(self, values: list[Any]) -> None:
        self.left -= sum(
            len(v) if isinstance(v, list | dict) else len(v) // CHARS_PER_STEP
            for v in values
            if isinstance(v, list | dict | str)
        )
        if self.left < 0:
            raise OverBudget(f"took more than {MAX_STEPS:,} steps (MAX_STEPS)")


# One interpreter for every search: ParsedResult.search builds a new one per call, which
# showed in profiles; the interpreter keeps no state between searches but a method cache
# and the budget of the search under way.
_INTERPRETER = _BudgetedInterpreter()

TemplatePath = tuple[str | int, ...]


@dataclass(frozen=True, slots=True)
class Expression:
    """A compiled JMESPath expression."""

    source: str
    parsed: jmespath.parser.ParsedResult

    def search(self, context: Mapping[str, Any]) -> Any:
        """The expression's value; ExpressionError when it fails, takes more than MAX_STEPS
        or builds a value of more than MAX_RESULT_BYTES."""
        _INTERPRETER.left = MAX_STEPS
        try:
            found = _INTERPRETER.visit(self.parsed.parsed, context)
            _INTERPRETER.check_built(found)
            return found
        except OverBudget as exc:
            raise OverBudget(f"{self.source!r} {exc}") from None
        except TooLarge as exc:
            raise TooLarge(f"{self.source!r} {exc}") from None
        except jmespath.exceptions.JMESPathError as exc:
            raise ExpressionError(f"{self.source!r}: {exc}") from None
        except ExpressionError as exc:  # one of our functions refused its arguments
            raise ExpressionError(f"{self.source!r}: {exc}") from None
        except (TypeError, ValueError, ArithmeticError, LookupError, RecursionError) as exc:
            # jmespath's functions let some Python errors through, e.g.
            # `contains('', null)` raises TypeError.
            raise ExpressionError(f"{self.source!r}: {type(exc).__name__}: {exc}") from None
        finally:
            _INTERPRETER.built.clear()
            _INTERPRETER.sizes.clear()

    def truthy(self, context: Mapping[str, Any]) -> bool:
        """JMESPath truth: false, null, "", [] and {} are false; everything else is true."""
        value = self.search(context)
        return not (value is None or value is False or value in ("", [], {}))

    def references_data(self) -> bool:
        """Whether the expression reads the context at all (a constant does not)."""
        return any(node.get("type") in {"field", "current"} for node in _walk(self.parsed.parsed))


def _walk(node: Any) -> Iterator[dict[str, Any]]:
    if isinstance(node, dict):
        yield node
        for child in node.get("children", ()):
            yield from _walk(child)


def compile_expression(source: str) -> Expression:
    """Compile a JMESPath expression or raise ExpressionError naming the problem: a syntax
    error, or a call of an unknown function or with the wrong number of arguments (which
    JMESPath itself finds only when the call runs)."""
    text = source.strip()
    if not text:
        raise ExpressionError("empty expression")
    try:
        parsed = jmespath.compile(text)
    except jmespath.exceptions.JMESPathError as exc:
        raise ExpressionError(_describe_parse_error(text, exc)) from None
    except (ValueError, TypeError, RecursionError) as exc:
        raise ExpressionError(f"invalid JMESPath expression {text!r}: {exc}") from None
    for node in _walk(parsed.parsed):
        if node.get("type") == "function_expression":
            problem = functions.call_problem(str(node["value"]), len(node["children"]))
            if problem is not None:
                raise ExpressionError(f"{text!r}: {problem}")
    return Expression(text, parsed)


def _describe_parse_error(text: str, exc: jmespath.exceptions.JMESPathError) -> str:
    where = getattr(exc, "lex_position", None)
    token = getattr(exc, "token_value", None)
    detail = getattr(exc, "msg", None) or str(exc).splitlines()[0]
    if isinstance(where, int) and where >= 0:
        near = f" near {token!r}" if token not in (None, "") else ""
        return f"invalid JMESPath expression {text!r} at character {where + 1}{near}: {detail}"
    return f"invalid JMESPath expression {text!r}: {detail}"


class Template(Protocol):
    """Something that renders to a JSON value given the job context."""

    @property
    def constant(self) -> bool: ...

    def render(self, context: Mapping[str, Any]) -> Any: ...


@dataclass(frozen=True, slots=True)
class Const:
    value: Any
    constant: bool = True

    def render(self, context: Mapping[str, Any]) -> Any:
        return self.value


@dataclass(frozen=True, slots=True)
class Whole:
    expression: Expression
    constant: bool = False

    def render(self, context: Mapping[str, Any]) -> Any:
        return self.expression.search(context)


def _as_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, sort_keys=True)


@dataclass(frozen=True, slots=True)
class Interpolated:
    parts: tuple[str | Expression, ...]
    constant: bool = False

    def render(self, context: Mapping[str, Any]) -> Any:
        return "".join(p if isinstance(p, str) else _as_text(p.search(context)) for p in self.parts)


@dataclass(frozen=True, slots=True)
class MappingTemplate:
    items: tuple[tuple[str, Template], ...]
    constant: bool = False

    def render(self, context: Mapping[str, Any]) -> Any:
        return {key: value.render(context) for key, value in self.items}


@dataclass(frozen=True, slots=True)
class ListTemplate:
    items: tuple[Template, ...]
    constant: bool = False

    def render(self, context: Mapping[str, Any]) -> Any:
        return [item.render(context) for item in self.items]


def split_template(text: str) -> list[str | Expression]:
    """Split a string into literal text and compiled `${ }` expressions."""
    parts: list[str | Expression] = []
    literal: list[str] = []
    i = 0
    while i < len(text):
        if text.startswith("$${", i):
            literal.append("${")
            i += 3
        elif text.startswith("${", i):
            end = _closing_brace(text, i + 2)
            if end < 0:
                raise ExpressionError(f"unterminated '${{' at character {i + 1} of {text!r}")
            if literal:
                parts.append("".join(literal))
                literal = []
            parts.append(compile_expression(text[i + 2 : end]))
            i = end + 1
        else:
            literal.append(text[i])
            i += 1
    if literal:
        parts.append("".join(literal))
    return parts


def _closing_brace(text: str, start: int) -> int:
    """Index of the `}` closing a `${` whose body starts at `start`, skipping quoted parts."""
    depth = 0
    i = start
    while i < len(text):
        ch = text[i]
        if ch in "'\"`":
            i += 1
            while i < len(text) and text[i] != ch:
                i += 2 if text[i] == "\\" else 1
        elif ch == "{":
            depth += 1
        elif ch == "}":
            if depth == 0:
                return i
            depth -= 1
        i += 1
    return -1


def compile_template(
    value: Any,
    path: TemplatePath = (),
    errors: list[tuple[TemplatePath, str]] | None = None,
) -> Template:
    """Compile a JSON value into a Template.

    With `errors`, every bad expression is appended as (path, message) and compilation goes
    on; without it, the first one raises ExpressionError.
    """
    if isinstance(value, str):
        if "${" not in value:
            return Const(value)
        try:
            parts = split_template(value)
        except ExpressionError as exc:
            if errors is None:
                raise
            errors.append((path, str(exc)))
            return Const(value)
        if len(parts) == 1 and isinstance(parts[0], Expression):
            return Whole(parts[0])
        if all(isinstance(p, str) for p in parts):
            return Const("".join(p for p in parts if isinstance(p, str)))
        return Interpolated(tuple(parts))
    if isinstance(value, dict):
        items = tuple((k, compile_template(v, (*path, k), errors)) for k, v in value.items())
        if all(t.constant for _, t in items):
            return Const(value)
        return MappingTemplate(items)
    if isinstance(value, list):
        elements = tuple(compile_template(v, (*path, i), errors) for i, v in enumerate(value))
        if all(t.constant for t in elements):
            return Const(value)
        return ListTemplate(elements)
    return Const(value)
