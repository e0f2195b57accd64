"""What this orchestrator committed last for each of its recent jobs.

A change of a job starts from here instead of reading Redis, and `GET ?wait=` decides from
here whether to wait. An entry may be out of date (another orchestrator changed the job):
the version guard of the next commit catches that, and the job is read then. Entries are
bounded (LRU), so memory stays flat however many jobs pass through.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from engine.jsonutil import loads
from engine.store.client import JobRecord

RECENT_JOBS = 4096  # a few MB of documents


@dataclass(frozen=True, slots=True)
class _Entry:
    version: int
    doc_json: str  # kept encoded: every caller gets its own copy to change
    leases: dict[str, str]
    terminal: bool


class RecentJobs:
    def __init__(self, size: int = RECENT_JOBS) -> None:
        self.size = size
        self._entries: OrderedDict[str, _Entry] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def remember(
        self, job_id: str, version: int, doc_json: str, leases: dict[str, str], terminal: bool
    ) -> None:
        self._entries[job_id] = _Entry(version, doc_json, leases, terminal)
        self._entries.move_to_end(job_id)
        while len(self._entries) > self.size:
            self._entries.popitem(last=False)

    def record(self, job_id: str) -> JobRecord | None:
        """The job as last committed here (a fresh copy), or None."""
        entry = self._entries.get(job_id)
        if entry is None:
            return None
        return JobRecord(entry.version, loads(entry.doc_json), dict(entry.leases))

    def ended(self, job_id: str) -> bool:
        """Whether the job is known to have ended (a terminal state is final)."""
        entry = self._entries.get(job_id)
        return entry is not None and entry.terminal

    def forget(self, job_id: str) -> None:
        self._entries.pop(job_id, None)

    def clear(self) -> None:
        self._entries.clear()

    def leased(self, job_id: str, task_id: str, version: int, lease: str) -> None:
        """The dispatcher leased a queued task of the job, which is now at `version`."""
        entry = self._entries.get(job_id)
        if entry is None:
            return
        if entry.version != version - 1:  # something else changed it too
            self.forget(job_id)
            return
        leases = {**entry.leases, task_id: lease}
        self._entries[job_id] = _Entry(version, entry.doc_json, leases, entry.terminal)
