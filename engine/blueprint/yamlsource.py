"""YAML to plain data, with the line and column of every key and value.

PyYAML is told to read YAML the way blueprint authors expect (YAML 1.2 booleans, so
`on:` stays the string "on"; dates stay strings) and to refuse what would silently
lose information: duplicate keys, non-string keys, tags it cannot map to JSON.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

import yaml

from engine.errors import BlueprintSyntaxError, Problem

Path = tuple[str | int, ...]

_BOOL = "tag:yaml.org,2002:bool"
_TIMESTAMP = "tag:yaml.org,2002:timestamp"
_MAP = "tag:yaml.org,2002:map"
_SEQ = "tag:yaml.org,2002:seq"
_MERGE = "tag:yaml.org,2002:merge"
_NULL = "tag:yaml.org,2002:null"
_VALUE = "tag:yaml.org,2002:value"  # PyYAML's `=` key; YAML 1.2 reads `=` as a string

MAX_DEPTH = 100
MAX_EXPANDED_NODES = 200_000


class _Loader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2 booleans and no timestamp resolution."""


_Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag not in (_BOOL, _TIMESTAMP)]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != _VALUE]
    for first, resolvers in _Loader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(
    _BOOL, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)


@dataclass
class Source:
    """Parsed YAML plus where each piece came from (1-based line and column)."""

    file: str
    data: Any
    values: dict[Path, tuple[int, int]] = field(default_factory=dict)
    keys: dict[Path, tuple[int, int]] = field(default_factory=dict)

    def position(self, path: Path, *, key: bool = False) -> tuple[int, int]:
        """Position of `path`, or of its nearest ancestor that has one."""
        probe = tuple(path)
        while True:
            if key and probe in self.keys:
                return self.keys[probe]
            if probe in self.values:
                return self.values[probe]
            if not probe:
                return (1, 1)
            probe = probe[:-1]

    def problem(
        self, path: Path, message: str, *, key: bool = False, severity: str = "error"
    ) -> Problem:
        line, column = self.position(path, key=key)
        return Problem(
            self.file,
            line,
            column,
            json_path(path),
            message,
            "warning" if severity == "warning" else "error",
        )


_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def json_path(path: Path) -> str:
    out = "$"
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        elif _IDENT.match(part):
            out += f".{part}"
        else:
            out += "[" + repr(part) + "]"
    return out


def _pos(mark: yaml.Mark | None) -> tuple[int, int]:
    return (mark.line + 1, mark.column + 1) if mark is not None else (1, 1)


_TAB_PROBLEM = "found character '\\t' that cannot start any token"


def _is_empty_document(node: yaml.Node) -> bool:
    """A document with no content at all (`---` alone, maybe with comments)."""
    return isinstance(node, yaml.ScalarNode) and node.tag == _NULL and node.value == ""


def _reader_problem(text: str, file: str, exc: yaml.reader.ReaderError) -> Problem:
    """A character YAML does not allow in a document (control characters and the like)."""
    before = text[: max(exc.position, 0)]
    line = before.count("\n") + 1
    column = len(before) - (before.rfind("\n") + 1) + 1
    character = exc.character if isinstance(exc.character, int) else ord(exc.character)
    return Problem(
        file,
        line,
        column,
        "$",
        f"YAML syntax error: character U+{character:04X} is not allowed in YAML; remove it",
    )


def parse_yaml(text: str, file: str) -> Source:
    """Parse one YAML document into JSON-compatible data, or raise BlueprintSyntaxError."""
    try:
        loader = _Loader(text)
    except yaml.reader.ReaderError as exc:
        raise BlueprintSyntaxError([_reader_problem(text, file, exc)]) from None
    try:
        node = loader.get_single_node()
    except yaml.reader.ReaderError as exc:
        raise BlueprintSyntaxError([_reader_problem(text, file, exc)]) from None
    except yaml.MarkedYAMLError as exc:
        line, column = _pos(exc.problem_mark or exc.context_mark)
        if exc.problem == _TAB_PROBLEM:
            message = "a tab character cannot indent YAML; use spaces"
        else:
            message = " ".join(filter(None, [exc.context, exc.problem])) or str(exc)
        raise BlueprintSyntaxError(
            [Problem(file, line, column, "$", f"YAML syntax error: {message}")]
        ) from None
    except yaml.YAMLError as exc:
        raise BlueprintSyntaxError([Problem(file, 1, 1, "$", f"YAML error: {exc}")]) from None
    except RecursionError:
        raise BlueprintSyntaxError(
            [Problem(file, 1, 1, "$", "YAML is nested too deeply")]
        ) from None
    finally:
        loader.dispose()
    if node is None or _is_empty_document(node):
        raise BlueprintSyntaxError(
            [Problem(file, 1, 1, "$", "the file is empty; a blueprint is a YAML mapping")]
        )
    builder = _Builder(loader, file)
    data = builder.build(node, (), 0)
    if builder.problems:
        raise BlueprintSyntaxError(builder.problems)
    return Source(file, data, builder.values, builder.keys)


class _Builder:
    """Turns a composed node tree into data, recording positions and problems."""

    def __init__(self, loader: _Loader, file: str) -> None:
        self.loader = loader
        self.file = file
        self.values: dict[Path, tuple[int, int]] = {}
        self.keys: dict[Path, tuple[int, int]] = {}
        self.problems: list[Problem] = []
        self._active: set[int] = set()
        self._sizes: dict[int, int] = {}
        self._budget = MAX_EXPANDED_NODES

    def fail(self, node: yaml.Node, path: Path, message: str) -> None:
        line, column = _pos(node.start_mark)
        self.problems.append(Problem(self.file, line, column, json_path(path), message))

    def build(self, node: yaml.Node, path: Path, depth: int) -> Any:
        self.values.setdefault(path, _pos(node.start_mark))
        if depth > MAX_DEPTH:
            self.fail(node, path, f"nested more than {MAX_DEPTH} levels deep")
            return None
        if id(node) in self._active:
            self.fail(node, path, "an alias refers to a node that contains it (a cycle)")
            return None
        self._budget -= 1
        if self._budget < 0:
            if self._budget == -1:
                self.fail(node, path, f"more than {MAX_EXPANDED_NODES} values after aliases")
            return None
        if isinstance(node, yaml.ScalarNode):
            value = self._scalar(node, path)
            if isinstance(value, float) and not math.isfinite(value):
                self.fail(
                    node, path, f"{node.value} is not a finite number (JSON has no infinity or NaN)"
                )
                return None
            return value
        self._active.add(id(node))
        try:
            if isinstance(node, yaml.SequenceNode):
                if node.tag != _SEQ:
                    self.fail(node, path, f"unsupported YAML tag {node.tag}")
                return [
                    self.build(item, (*path, i), depth + 1) for i, item in enumerate(node.value)
                ]
            assert isinstance(node, yaml.MappingNode)
            return self._mapping(node, path, depth)
        finally:
            self._active.discard(id(node))

    def _scalar(self, node: yaml.ScalarNode, path: Path) -> Any:
        try:
            value = self.loader.construct_object(node, deep=True)
        except yaml.YAMLError as exc:
            self.fail(node, path, f"cannot read value: {getattr(exc, 'problem', None) or exc}")
            return None
        except (ValueError, TypeError, LookupError, AttributeError, ArithmeticError):
            # PyYAML's constructors trust an explicit tag: `!!int ''`, `!!bool a` and
            # `!!timestamp a` raise plain Python errors.
            tag = node.tag.replace("tag:yaml.org,2002:", "!!")
            self.fail(node, path, f"cannot read {node.value!r} as {tag}")
            return None
        if value is None or isinstance(value, str | bool | int | float):
            return value
        self.fail(node, path, f"unsupported YAML value of type {type(value).__name__}")
        return None

    def _pairs(
        self, node: yaml.MappingNode, path: Path, merging: frozenset[int] = frozenset()
    ) -> list[tuple[yaml.Node, yaml.Node]]:
        """Key/value node pairs with `<<` merges applied (explicit keys come last and win).
        `merging` holds the mappings being merged into this one, to catch alias cycles."""
        merging = merging | {id(node)}
        merged: list[tuple[yaml.Node, yaml.Node]] = []
        explicit: list[tuple[yaml.Node, yaml.Node]] = []
        for key_node, value_node in node.value:
            if key_node.tag != _MERGE:
                explicit.append((key_node, value_node))
                continue
            sources = (
                value_node.value if isinstance(value_node, yaml.SequenceNode) else [value_node]
            )
            for source in sources:
                if id(source) in merging or id(source) in self._active:
                    self.fail(source, path, "a `<<` merge refers to a mapping that contains it")
                elif isinstance(source, yaml.MappingNode):
                    merged.extend(self._pairs(source, path, merging))
                else:
                    self.fail(source, path, "`<<` merges only mappings")
        return merged + explicit

    def _mapping(self, node: yaml.MappingNode, path: Path, depth: int) -> dict[str, Any]:
        if node.tag != _MAP:
            self.fail(node, path, f"unsupported YAML tag {node.tag}")
        pairs = self._pairs(node, path)
        explicit = {id(k) for k, _ in node.value}
        out: dict[str, Any] = {}
        seen: dict[str, yaml.Node] = {}
        for key_node, value_node in pairs:
            if not isinstance(key_node, yaml.ScalarNode):
                self.fail(key_node, path, "a mapping key must be a plain string")
                continue
            key = self._scalar(key_node, path)
            if not isinstance(key, str):
                shown = (
                    "null" if key is None else str(key).lower() if isinstance(key, bool) else key
                )
                self.fail(key_node, path, f"mapping key {shown!r} must be a string; quote it")
                continue
            if key in seen and id(key_node) in explicit and id(seen[key]) in explicit:
                first = _pos(seen[key].start_mark)
                self.fail(
                    key_node,
                    (*path, key),
                    f"duplicate key {key!r} (first defined at line {first[0]})",
                )
                continue
            seen[key] = key_node
            child = (*path, key)
            self.keys[child] = _pos(key_node.start_mark)
            self.values.pop(child, None)  # an explicit key overrides a merged one
            out.pop(key, None)
            out[key] = self.build(value_node, child, depth + 1)
        return out
