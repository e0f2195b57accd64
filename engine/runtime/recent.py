"""What this orchestrator committed last for each of its recent jobs.

A change of a job starts from here instead of reading Redis, and `GET ?wait=` decides from
here whether to wait. An entry may be out of date (another orchestrator changed the job):
the version guard of the next commit catches that, and the job is read then. Entries are
bounded (LRU) in number and in bytes, so memory stays flat however many jobs pass
through, and however large their documents are (1,200 jobs of 900 KB held 1 GiB when only
the number was bounded).
"""

from __future__ import annotations

import sys
from collections import OrderedDict
from dataclasses import dataclass

from engine.jsonutil import loads
from engine.store.client import JobRecord

RECENT_JOBS = 4096  # a few MB of documents
RECENT_BYTES = 64 << 20  # the most the kept documents may take, however large each is


@dataclass(frozen=True, slots=True)
class _Entry:
    version: int
    doc_json: str  # kept encoded: every caller gets its own copy to change
    leases: dict[str, str]
    terminal: bool

    @property
    def bytes(self) -> int:
        """The memory the encoded document takes (the leases are a few short strings)."""
        return sys.getsizeof(self.doc_json)


class RecentJobs:
    def __init__(self, size: int = RECENT_JOBS, max_bytes: int = RECENT_BYTES) -> None:
        self.size = size
        self.max_bytes = max_bytes
        self.bytes = 0  # the sum of the entries' `bytes`
        self._entries: OrderedDict[str, _Entry] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def remember(
        self, job_id: str, version: int, doc_json: str, leases: dict[str, str], terminal: bool
    ) -> None:
        self._put(job_id, _Entry(version, doc_json, leases, terminal))
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
        return JobRecord(entry.version, loads(entry.doc_json), dict(entry.leases))

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
        self._put(job_id, _Entry(version, entry.doc_json, leases, entry.terminal))
