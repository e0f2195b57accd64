"""The functions expressions may call: JMESPath's own, plus arithmetic and everyday ones.

JMESPath has no `+`: counting a loop or adding two amounts needs a function. These are
registered with the `jmespath` package's own mechanism (a `Functions` subclass handed to the
interpreter in `Options(custom_functions=...)`), so they type-check their arguments the
same way the built-in ones do. What they produce is bounded: numbers stay within a double's
range, strings within `MAX_TEXT` characters and arrays within `MAX_ITEMS` items, so that a
loop that doubles a value fails the job instead of filling Redis.

`now()`, `now_ms()` and `uuid()` read the change in progress: its one instant and its random
source (`moment`), which the transition rules set when they build an expression's context
(`Step.context`). So every expression of one change sees the same `now()` as the rules'
timers do, tests on a fake clock get the fake time, and a change decided again after a
version conflict simply draws again: only the committed change's values are ever stored.
Outside a change (a constant condition checked at load time) they read the wall clock.
"""

from __future__ import annotations

import difflib
import math
import random
import re
import uuid
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import ROUND_HALF_UP, Decimal
from typing import Any, TypeVar, cast

import jmespath.exceptions
import jmespath.functions

from engine.clock import now_ms
from engine.errors import ExpressionError

MAX_TEXT = 1_000_000  # characters a function may produce in one string
MAX_ITEMS = 100_000  # items a function may produce in one array
MAX_DIGITS = 15  # round(): a double holds about 15 significant decimal digits

#: Functions whose value changes from one call to the next (the time, random ids).
VOLATILE = frozenset({"now", "now_ms", "uuid"})

_NUMBER = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?")
_SYSTEM_RNG = random.SystemRandom()


F = TypeVar("F", bound=Callable[..., Any])


def signature(*arguments: dict[str, Any]) -> Callable[[F], F]:
    """JMESPath's `signature` decorator, typed."""
    return cast(Callable[[F], F], jmespath.functions.signature(*arguments))


@dataclass(frozen=True, slots=True)
class Moment:
    """The change in progress, as `now()`, `now_ms()` and `uuid()` see it."""

    now_ms: int  # epoch ms: the change's one instant
    rng: random.Random  # where uuid() draws from


moment: ContextVar[Moment | None] = ContextVar("interlock_expression_moment", default=None)


class CallError(ExpressionError):
    """A function was called with values it cannot work with (division by zero, ...)."""


def _finite(name: str, value: int | float) -> int | float:
    """`value`, if JSON can carry it as a double; the function's error otherwise."""
    try:
        ok = math.isfinite(float(value))
    except OverflowError:
        ok = False
    if not ok:
        raise CallError(f"{name}() gave a number beyond the range of a double")
    return value


def _exact(value: float) -> int | float:
    """An integral float as an int (6 / 3 is 2, not 2.0), anything else as it is."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return int(value)
    return value


def _text(name: str, position: int, value: Any) -> str:
    """A value as text, the way `${ }` interpolates it; null and containers are refused
    (a missing field should fail loudly, not print "null")."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(_exact(value)) if isinstance(value, float) else str(value)
    kind = "null" if value is None else jmespath.functions.TYPES_MAP.get(type(value).__name__)
    raise CallError(
        f"{name}() argument {position} is {kind}; only strings, numbers and booleans "
        "are text (use not_null(x, '') for a default)"
    )


def _bounded_text(name: str, text: str) -> str:
    if len(text) > MAX_TEXT:
        raise CallError(f"{name}() would make a string of more than {MAX_TEXT} characters")
    return text


def _render_format(template: str, args: tuple[Any, ...]) -> str:
    """`{}` is the next argument, `{0}` the first, `{{` and `}}` are braces; nothing else
    (no attribute access, no format specs: the template may come from data)."""
    out: list[str] = []
    size = 0
    auto = 0
    i = 0
    while i < len(template):
        ch = template[i]
        if template.startswith(("{{", "}}"), i):
            piece, i = ch, i + 2
        elif ch == "{":
            end = template.find("}", i)
            field = template[i + 1 : end] if end > 0 else None
            if field is None or not (field == "" or field.isdigit()):
                raise CallError(
                    f"format() template {template[:60]!r}: '{{' at character {i + 1} "
                    "must start {}, {0}, {1}... (write {{ for a brace)"
                )
            index = auto if field == "" else int(field)
            auto += field == ""
            if index >= len(args):
                raise CallError(
                    f"format() template {template[:60]!r} uses argument {index} "
                    f"but got {len(args)} after the template"
                )
            piece, i = _text("format", index + 2, args[index]), end + 1
        elif ch == "}":
            raise CallError(
                f"format() template {template[:60]!r}: lone '}}' at character {i + 1} "
                "(write }} for a brace)"
            )
        else:
            piece, i = ch, i + 1
        size += len(piece)
        if size > MAX_TEXT:
            _bounded_text("format", " " * size)
        out.append(piece)
    return "".join(out)


def _iso(ms: int | float) -> str:
    try:
        moment_ = datetime.fromtimestamp(ms / 1000, UTC)
    except (OverflowError, OSError, ValueError):
        raise CallError(f"ms_to_time(): {ms!r} ms is not a date JSON can carry") from None
    return moment_.isoformat(timespec="milliseconds").replace("+00:00", "Z")


class Functions(jmespath.functions.Functions):  # type: ignore[misc]  # jmespath is untyped
    """JMESPath's functions plus Interlock's. An argument spec may say `optional`: it and
    the ones after it may be left out (JMESPath itself knows only `variadic`, which here
    means "any number more", none included when the spec is also optional)."""

    def _validate_arguments(self, args: Any, signature: Any, function_name: Any) -> Any:
        problem = _arity_problem(function_name, signature, len(args))
        if problem is not None:
            raise CallError(problem)
        return self._type_check(args, signature[: len(args)], function_name)

    def _type_check(self, actual: Any, signature: Any, function_name: Any) -> Any:
        # JMESPath checks only as many arguments as the signature has; check the variadic
        # tail against the last spec too (add(1, 2, 'x') is a type error, not a crash).
        super()._type_check(actual, signature, function_name)
        if signature and signature[-1].get("variadic") and signature[-1]["types"]:
            for extra in actual[len(signature) :]:
                self._type_check_single(extra, signature[-1]["types"], function_name)

    # -- arithmetic ------------------------------------------------------------------------

    @signature({"types": ["number"]}, {"types": ["number"], "variadic": True})
    def _func_add(self, *numbers: int | float) -> int | float:
        return _finite("add", sum(numbers))

    @signature({"types": ["number"]}, {"types": ["number"]})
    def _func_subtract(self, a: int | float, b: int | float) -> int | float:
        return _finite("subtract", a - b)

    @signature({"types": ["number"]}, {"types": ["number"], "variadic": True})
    def _func_multiply(self, *numbers: int | float) -> int | float:
        product: int | float = 1
        for number in numbers:
            product = _finite("multiply", product * number)
        return product

    @signature({"types": ["number"]}, {"types": ["number"]})
    def _func_divide(self, a: int | float, b: int | float) -> int | float:
        if b == 0:
            raise CallError(f"divide(): division by zero ({a!r} / {b!r})")
        return _exact(_finite("divide", a / b))

    @signature({"types": ["number"]}, {"types": ["number"]})
    def _func_mod(self, a: int | float, b: int | float) -> int | float:
        if b == 0:
            raise CallError(f"mod(): division by zero ({a!r} mod {b!r})")
        return _finite("mod", a % b)

    @signature({"types": ["number"]}, {"types": ["number"], "optional": True})
    def _func_round(self, number: int | float, digits: int | float = 0) -> int | float:
        if not isinstance(digits, int) or not 0 <= digits <= MAX_DIGITS:
            raise CallError(f"round(): digits must be a whole number from 0 to {MAX_DIGITS}")
        if isinstance(number, int):
            return number
        rounded = Decimal(repr(number)).quantize(Decimal(1).scaleb(-digits), ROUND_HALF_UP)
        return int(rounded) if digits == 0 else float(rounded)

    # -- text and arrays -------------------------------------------------------------------

    @signature({"types": []}, {"types": [], "variadic": True})
    def _func_concat(self, *values: Any) -> str | list[Any]:
        if any(isinstance(v, list) for v in values):
            if not all(isinstance(v, list) for v in values):
                raise CallError("concat() joins strings or arrays, not both")
            if sum(len(v) for v in values) > MAX_ITEMS:
                raise CallError(f"concat() would make an array of more than {MAX_ITEMS} items")
            return [item for v in values for item in v]
        text = "".join(_text("concat", i + 1, v) for i, v in enumerate(values))
        return _bounded_text("concat", text)

    @signature({"types": ["string"]}, {"types": [], "variadic": True, "optional": True})
    def _func_format(self, template: str, *args: Any) -> str:
        return _render_format(template, args)

    @signature({"types": ["string"]})
    def _func_lower(self, text: str) -> str:
        return text.lower()

    @signature({"types": ["string"]})
    def _func_upper(self, text: str) -> str:
        return text.upper()

    @signature({"types": ["string"]})
    def _func_trim(self, text: str) -> str:
        return text.strip()

    @signature({"types": ["string"]}, {"types": ["string"]})
    def _func_split(self, text: str, separator: str) -> list[str]:
        if not separator:
            raise CallError("split(): the separator is empty")
        parts = text.split(separator, MAX_ITEMS)
        if len(parts) > MAX_ITEMS:
            raise CallError(f"split() would make an array of more than {MAX_ITEMS} items")
        return parts

    @signature({"types": ["string"]}, {"types": ["string"]}, {"types": ["string"]})
    def _func_replace(self, text: str, old: str, new: str) -> str:
        if not old:
            raise CallError("replace(): the text to replace is empty")
        grown = text.count(old) * (len(new) - len(old))
        if len(text) + grown > MAX_TEXT:
            raise CallError(f"replace() would make a string of more than {MAX_TEXT} characters")
        return text.replace(old, new)

    # -- conversions -----------------------------------------------------------------------

    @signature({"types": []}, {"types": [], "optional": True})
    def _func_to_number(self, value: Any, default: Any = None) -> Any:
        """A number, a string holding one (`" 42 "`, `"1.5e3"`), else `default` (null)."""
        if isinstance(value, bool) or value is None:
            return default
        if isinstance(value, int | float):
            return value
        if isinstance(value, str) and _NUMBER.fullmatch(text := value.strip()):
            number = float(text) if any(c in text for c in ".eE") else int(text)
            if math.isfinite(number):
                return number
        return default

    # -- time and ids ----------------------------------------------------------------------

    @signature()
    def _func_now(self) -> str:
        return _iso(_moment().now_ms)

    @signature()
    def _func_now_ms(self) -> int:
        return _moment().now_ms

    @signature({"types": ["number"]})
    def _func_ms_to_time(self, ms: int | float) -> str:
        return _iso(ms)

    @signature({"types": ["string"]})
    def _func_time_to_ms(self, text: str) -> int:
        try:
            parsed = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
        except ValueError:
            raise CallError(f"time_to_ms(): {text[:60]!r} is not an ISO 8601 date-time") from None
        if parsed.tzinfo is None:
            raise CallError(f"time_to_ms(): {text[:60]!r} has no timezone (add Z or +hh:mm)")
        return int(parsed.timestamp() * 1000)

    @signature()
    def _func_uuid(self) -> str:
        return str(uuid.UUID(int=_moment().rng.getrandbits(128), version=4))


def _moment() -> Moment:
    return moment.get() or Moment(now_ms(), _SYSTEM_RNG)


FUNCTIONS = Functions()
_TABLE: dict[str, dict[str, Any]] = FUNCTIONS.FUNCTION_TABLE


def _bounds(signature: Any) -> tuple[int, float]:
    """(fewest, most) arguments a signature takes."""
    least = sum(1 for spec in signature if not spec.get("optional"))
    return least, math.inf if signature and signature[-1].get("variadic") else len(signature)


def _arity_problem(name: str, signature: Any, count: int) -> str | None:
    least, most = _bounds(signature)
    if least <= count <= most:
        return None
    if most == math.inf:
        wanted = f"at least {least}"
    elif least == most:
        wanted = str(least)
    else:
        wanted = f"{least} to {int(most)}"
    plural = "" if wanted in ("1", "at least 1") else "s"
    return f"{name}() takes {wanted} argument{plural}, not {count}"


def call_problem(name: str, count: int) -> str | None:
    """What is wrong with calling `name` with `count` arguments, or None."""
    spec = _TABLE.get(name)
    if spec is None:
        close = difflib.get_close_matches(name, list(_TABLE), n=1)
        hint = f"; did you mean {close[0]}()?" if close else ""
        return f"unknown function {name}(){hint}"
    return _arity_problem(name, spec["signature"], count)


def signatures() -> dict[str, tuple[int, float]]:
    """Each function's name -> (fewest, most) arguments."""
    return {name: _bounds(spec["signature"]) for name, spec in _TABLE.items()}
