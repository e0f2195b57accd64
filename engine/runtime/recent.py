"""What this orchestrator committed last for each of its recent jobs.

A change of a job starts from here instead of reading Redis, and `GET ?wait=` decides from
here whether to wait. An entry may be out of date (another orchestrator changed the job):
the version guard of the next commit catches that, and the job is read then. Entries are
bounded (LRU) in number and in bytes, so memory stays flat however many jobs pass
through, and however large their documents are (1,200 jobs of 900 KB held 1 GiB when only
the number was bounded). An entry's bytes count its document, its initial_data and its step
outputs (each by its encoded length).
"""

from __future__ import annotations

import sys
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from engine.jsonutil import loads
from engine.runtime import outputs
from engine.runtime.outputs import Kept
from engine.store.apart import unpack
from engine.store.client import JobRecord

RECENT_JOBS = 4096  # a few MB of documents
RECENT_BYTES = 64 << 20  # the most the kept documents may take, however large each is
TASK_BYTES = 1024  # about the memory an active task's record takes, decoded
IN_DOC: Any = object()  # remember(initial_data=IN_DOC): the encoded document carries it


@dataclass(frozen=True, slots=True)
class _Entry:
    version: int
    doc_json: str  # kept encoded (less initial_data): every caller gets its own copy to change
    # Decoded once and shared by every copy: no rule changes a job's initial_data, and a
    # wide for_each over it must not decode it again for each branch.
    initial_data: Any
    input_bytes: int  # about the memory initial_data takes (its JSON's length)
    leases: dict[str, str]
    terminal: bool
    # The step outputs, decoded once and shared like initial_data (no rule changes an
    # output once produced: a new one replaces it).
    kept: Kept
    # The active tasks' records, shared by every copy (a rule replaces a record it changes),
    # when the document keeps only their list; None: the encoded document carries them.
    tasks: dict[str, Any] | None = None

    @property
    def bytes(self) -> int:
        """The memory the document, its step outputs and its active tasks take (the leases
        are a few short strings)."""
        tasks = len(self.tasks) * TASK_BYTES if self.tasks else 0
        return sys.getsizeof(self.doc_json) + self.input_bytes + self.kept.bytes + tasks


class RecentJobs:
    def __init__(self, size: int = RECENT_JOBS, max_bytes: int = RECENT_BYTES) -> None:
        self.size = size
        self.max_bytes = max_bytes
        self.bytes = 0  # the sum of the entries' `bytes`
        self._entries: OrderedDict[str, _Entry] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def remember(
        self,
        job_id: str,
        version: int,
        doc_json: str,
        leases: dict[str, str],
        terminal: bool,
        *,
        initial_data: Any = IN_DOC,
        input_bytes: int | None = None,
        kept: Kept | None = None,
        tasks: dict[str, Any] | None = None,
    ) -> None:
        """What was committed: the document, encoded without its initial_data when that is
        given apart (`input_bytes`: its encoded length; None: as remembered before), and
        without the step outputs it names (`kept`) when it names them."""
        if input_bytes is None:
            old = self._entries.get(job_id)
            input_bytes = old.input_bytes if old is not None else 0
        kept = kept if kept is not None else Kept()
        entry = _Entry(version, doc_json, initial_data, input_bytes, leases, terminal, kept, tasks)
        self._put(job_id, entry)
        self._entries.move_to_end(job_id)
        while self._entries and (len(self._entries) > self.size or self.bytes > self.max_bytes):
            self.bytes -= self._entries.popitem(last=False)[1].bytes

    def _put(self, job_id: str, entry: _Entry) -> None:
        old = self._entries.get(job_id)
        if old is not None:
            self.bytes -= old.bytes
        self._entries[job_id] = entry
        self.bytes += entry.bytes

    def record(self, job_id: str) -> JobRecord | None:
        """The job as last committed here (a fresh copy), or None."""
        entry = self._entries.get(job_id)
        if entry is None:
            return None
        doc = loads(entry.doc_json)
        apart = entry.initial_data is not IN_DOC
        if apart:
            doc["initial_data"] = entry.initial_data
        outputs.assemble(doc, entry.kept)
        record = JobRecord(
            entry.version, doc, dict(entry.leases), input_apart=apart, kept=entry.kept
        )
        if entry.tasks is not None:
            unpack(doc)
            doc["tasks"] = dict(entry.tasks)
            record.tasks_apart, record.tasks_read = True, entry.tasks
        return record

    def version(self, job_id: str) -> int | None:
        """The version of the job remembered, or None."""
        entry = self._entries.get(job_id)
        return entry.version if entry is not None else None

    def forget(self, job_id: str) -> None:
        entry = self._entries.pop(job_id, None)
        if entry is not None:
            self.bytes -= entry.bytes

    def clear(self) -> None:
        self._entries.clear()
        self.bytes = 0

    def leased(self, job_id: str, task_id: str, version: int, lease: str) -> None:
        """The dispatcher leased a queued task of the job, which is now at `version`."""
        entry = self._entries.get(job_id)
        if entry is None:
            return
        if entry.version != version - 1:  # something else changed it too
            self.forget(job_id)
            return
        leases = {**entry.leases, task_id: lease}
        self._put(
            job_id,
            _Entry(
                version,
                entry.doc_json,
                entry.initial_data,
                entry.input_bytes,
                leases,
                entry.terminal,
                entry.kept,
                entry.tasks,
            ),
        )
