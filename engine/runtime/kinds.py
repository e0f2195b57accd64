"""The rules of every state kind, in one table.

`PerKind` makes mypy reject this table if a kind is missing: a new kind gets its hooks
(`engine.runtime.step.Kind`) in a family module and one line here.
"""

from __future__ import annotations

from typing import Any

from engine.blueprint.model import PerKind
from engine.runtime.events import ListenKind
from engine.runtime.flow import ChoiceKind, EndKind, SetKind, WaitKind
from engine.runtime.parallel import ParallelKind
from engine.runtime.step import Kind
from engine.runtime.tasks import TaskKind
from engine.runtime.waiting import ApprovalKind, SubflowKind

KINDS: PerKind[Kind[Any]] = {
    "task": TaskKind(),
    "choice": ChoiceKind(),
    "parallel": ParallelKind(),
    "wait": WaitKind(),
    "approval": ApprovalKind(),
    "listen": ListenKind(),
    "subflow": SubflowKind(),
    "set": SetKind(),
    "end": EndKind(),
}
