"""Step outputs stored once each, beside the job document.

A state's output (`steps.<state>`, and for a dict output its keys merged into
`state_history`) is written as its own job hash field `o:<n>` in the commit that produces
it, and not again: the document keeps only which output each state has (`outs`: state ->
n), the outputs merged into `state_history`, in order (`layers`), and the next number
(`oseq`). Before, every later change of the job rewrote every earlier output inside the
document (a linear job with a 1 MB input wrote it again with each state).

In memory a job's document carries `steps` and `state_history` as always: `assemble`
rebuilds them from the outputs read, and `stored` leaves them out of the encoded document.
A document written before outputs were stored apart has no `outs`: its first change
stores its outputs, and its state_history as one layer.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from engine.jsonutil import dumps
from engine.runtime.jobdoc import JobDoc

# The document's keys that are stored apart or not at all (rebuilt as read).
APART = frozenset({"initial_data", "steps", "state_history"})


@dataclass(slots=True)
class Kept:
    """The outputs a job's document refers to, decoded (by number), and about how much
    memory they take (their encoded length)."""

    values: dict[int, Any] = field(default_factory=dict)
    sizes: dict[int, int] = field(default_factory=dict)

    @property
    def bytes(self) -> int:
        return sum(self.sizes.values())


def field_name(n: int) -> str:
    return f"o:{n}"


def wanted(doc: Mapping[str, Any]) -> list[int]:
    """The outputs a document as read refers to (none for one that carries its own)."""
    if "outs" not in doc:
        return []
    return sorted({*doc["outs"].values(), *doc["layers"]})


def assemble(doc: JobDoc, kept: Kept) -> None:
    """Put `steps` and `state_history` back into a document read without them."""
    if "outs" not in doc:
        return  # written before outputs were stored apart: it carries them
    values = kept.values
    doc["steps"] = {state: values[n] for state, n in doc["outs"].items()}
    history: dict[str, Any] = {}
    for n in doc["layers"]:
        history.update(values[n])
    doc["state_history"] = history


def stored(doc: JobDoc) -> str:
    """The document as stored: without what is stored apart."""
    return dumps({k: v for k, v in doc.items() if k not in APART})


@dataclass(slots=True)
class Written:
    """What a change writes of the outputs: fields to set, numbers to delete, and the
    outputs the document refers to afterwards."""

    fields: dict[str, str]
    drop: list[int]
    kept: Kept


def write(doc: JobDoc, before: Kept, produced: list[tuple[str | None, Any, bool]]) -> Written:
    """Number the outputs a change `produced` ((state, value, merged into state_history)),
    in order, and update the document's bookkeeping; returns the fields to write. An output
    no longer referred to (replaced, and not a layer still needed) is deleted."""
    if "outs" not in doc:  # the first change of a document that carried its outputs
        produced = [(state, value, False) for state, value in doc["steps"].items()]
        if doc["state_history"]:
            produced.append((None, dict(doc["state_history"]), True))
        doc["outs"], doc["layers"], doc["oseq"] = {}, [], 0
    if not produced:
        return Written({}, [], before)
    outs, layers = doc["outs"], doc["layers"]
    values = dict(before.values)
    referred = {*outs.values(), *layers}
    fresh: list[int] = []
    for state, value, merged in produced:
        n = doc["oseq"]
        doc["oseq"] = n + 1
        values[n] = value
        fresh.append(n)
        if state is not None:
            outs[state] = n
        if merged:
            layers.append(n)
    if any(merged for _, _, merged in produced):
        layers[:] = _needed_layers(layers, values)
    now = {*outs.values(), *layers}
    fields: dict[str, str] = {}
    sizes = {n: size for n, size in before.sizes.items() if n in now}
    for n in fresh:
        if n in now:
            text = dumps(values[n])
            fields[field_name(n)] = text
            sizes[n] = len(text)
    kept = Kept({n: v for n, v in values.items() if n in now}, sizes)
    return Written(fields, sorted(referred - now), kept)


def _needed_layers(layers: list[int], values: dict[int, Any]) -> list[int]:
    """`layers` less those that change nothing of the merge: a layer each of whose keys an
    earlier layer kept brought first (so the keys' order stays) and a later layer brings
    again (so its values are overwritten). A loop that records the same keys on every
    round keeps two layers, not one per round. A layer whose value is not at hand stays."""
    known = [n in values and isinstance(values[n], dict) for n in layers]
    later: list[set[str]] = [set() for _ in layers]
    seen_after: set[str] = set()
    for i in range(len(layers) - 1, -1, -1):
        later[i] = set(seen_after)
        if known[i]:
            seen_after.update(values[layers[i]])
    kept: list[int] = []
    seen_before: set[str] = set()
    for i, n in enumerate(layers):
        if known[i]:
            keys = values[n].keys()
            if i < len(layers) - 1 and keys <= seen_before and keys <= later[i]:
                continue
            seen_before.update(keys)
        kept.append(n)
    return kept
