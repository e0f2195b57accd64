"""The engine's error tree: one root, one branch per concern."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Severity = Literal["error", "warning"]


@dataclass(frozen=True, slots=True)
class Problem:
    """One finding about a blueprint file, located as precisely as the source allows."""

    file: str
    line: int  # 1-based
    column: int  # 1-based
    path: str  # JSON path such as $.states.pay.on.success
    message: str
    severity: Severity = "error"

    def __str__(self) -> str:
        prefix = "warning: " if self.severity == "warning" else ""
        return f"{self.file}:{self.line}:{self.column}: {self.path}: {prefix}{self.message}"

    @property
    def sort_key(self) -> tuple[str, int, int, str, str]:
        return (self.file, self.line, self.column, self.path, self.message)


class InterlockError(Exception):
    """Root of every error the engine raises on purpose."""


class BlueprintError(InterlockError):
    """A blueprint could not be loaded. `problems` lists every error found (never empty)."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = sorted(problems, key=lambda p: p.sort_key)
        errors = [p for p in self.problems if p.severity == "error"] or self.problems
        more = len(errors) - 1
        summary = str(errors[0]) if errors else "invalid blueprint"
        if more:
            summary += f" (and {more} more)"
        super().__init__(summary)


class BlueprintSyntaxError(BlueprintError):
    """The file is not YAML a blueprint can be read from (syntax, duplicate keys, shape)."""


class BlueprintInvalid(BlueprintError):
    """The YAML is readable but breaks the schema or the language's rules."""


class ExpressionError(InterlockError):
    """A JMESPath expression or `${ }` template failed to compile or to evaluate."""
