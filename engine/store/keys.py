"""Every Redis key and channel name Interlock uses, built here and nowhere else.

Keys are grouped by *partition*: a job belongs to partition crc32(job_id) % partitions, and
every key of a partition carries the hash tag `{pN}`. A job's hash, the task queues and the
timer set it touches are therefore in one slot, so each state change is one Lua script on
one slot, on a single Redis and on Redis Cluster alike. Worker keys carry `{w:<id>}`.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Keys:
    prefix: str = "il"
    partitions: int = 8

    def partition(self, job_id: str) -> int:
        return zlib.crc32(job_id.encode()) % self.partitions

    def _p(self, partition: int) -> str:
        return f"{self.prefix}:{{p{partition}}}"

    def job(self, job_id: str) -> str:
        """Hash of one job: v (version), doc (JSON document), leases (JSON: task id ->
        `q|<lease_ms>` or `l|<lease_ms>|<worker>|<ms>`), p:<task id> (the payload handed to
        the worker) and h:<seq> (history entries). One key, so a change is one HSET."""
        return f"{self._p(self.partition(job_id))}:job:{job_id}"

    def webhooks(self, partition: int) -> str:
        """Sorted set of job ids whose terminal webhook is due, by next attempt (ms)."""
        return f"{self._p(partition)}:webhooks"

    def humans(self, partition: int) -> str:
        """Sorted set of job ids waiting for a person's decision, by since when (ms)."""
        return f"{self._p(partition)}:humans"

    def skill_workers(self, task_type: str) -> str:
        """Sorted set of the ids of workers serving `task_type`, by when each was last seen
        (registration or heartbeat, ms). Read by metrics and `explain`."""
        return f"{self.prefix}:{{s:{task_type}}}:workers"

    def queue(self, partition: int, task_type: str) -> str:
        """Sorted set of `job_id|task_id` waiting for a worker of `task_type`."""
        return f"{self._p(partition)}:queue:{task_type}"

    def timers(self, partition: int) -> str:
        """Sorted set of job ids by the time (ms) their next deadline falls due."""
        return f"{self._p(partition)}:timers"

    def client_jobs(self, partition: int, client: str) -> str:
        """Sorted set of a client's job ids by creation time (ms)."""
        return f"{self._p(partition)}:client:{client}"

    def worker(self, worker_id: str) -> str:
        """String: the worker's registration (JSON)."""
        return f"{self.prefix}:{{w:{worker_id}}}:worker"

    def worker_alive(self, worker_id: str) -> str:
        """String with a TTL: the worker's last heartbeat (JSON: time and current tasks)."""
        return f"{self.prefix}:{{w:{worker_id}}}:alive"

    def worker_cancels(self, worker_id: str) -> str:
        """Set of task ids the worker should cancel, answered on its next heartbeat."""
        return f"{self.prefix}:{{w:{worker_id}}}:cancel"

    def blueprint(self, content_hash: str) -> str:
        """String: a blueprint's canonical JSON, so any orchestrator can run pinned jobs."""
        return f"{self.prefix}:blueprint:{content_hash}"

    @property
    def meta(self) -> str:
        """Hash of deployment settings every orchestrator must agree on (partitions)."""
        return f"{self.prefix}:meta"

    @property
    def ready_channel(self) -> str:
        """Pub/sub: `task_type|partition` lines, one per queue that got tasks."""
        return f"{self.prefix}:ready"

    @property
    def done_channel(self) -> str:
        """Pub/sub: space-separated ids of jobs that reached a terminal status."""
        return f"{self.prefix}:done"
