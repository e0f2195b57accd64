"""Every Redis key and channel name Interlock uses, built here and nowhere else.

Keys are grouped by *partition*: a job belongs to partition crc32(job_id) % partitions, and
every key of a partition carries the partition's hash tag. A job's hash, the task queues and
the timer set it touches are therefore in one slot, so each state change is one Lua script on
one slot, on a single Redis and on Redis Cluster alike. Worker keys carry `{w:<id>}`.

Partition N's tag (for a store set up since the tags were spread) is the one of `{s0}`,
`{s1}`, ... that puts it in the N-th of `partitions` equal ranges of the 16384 cluster
slots (`spread_tags`). A cluster assigns slots to masters in contiguous ranges, so the partitions
fall evenly on its masters: 64 partitions give 21/21/22 on 3 masters and 6 or 7 on each of
10, where the plain `{pN}` tags (CRC16 clusters them) give 20 to 24 and 4 to 9. A store set
up before keeps the plain tags (`spread=False`; see Store.connect).
Notifications go out on two channels on a single Redis, and on two shard channels per
partition (with the partition's tag) on Redis Cluster, see engine/store/cluster.py.
"""

from __future__ import annotations

import functools
import zlib
from dataclasses import dataclass

from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot

# A new store's partition count. On a cluster, enough to spread over many masters; on a
# single Redis, 8: every partition costs a script call in each group commit that touches it
# and a timer sweep per turn, for nothing (bench/README.md, "Redis Cluster").
DEFAULT_PARTITIONS = 8
CLUSTER_PARTITIONS = 64


@functools.cache
def spread_tags(partitions: int) -> tuple[str, ...]:
    """The hash tag of each partition: partition N's slot lies in the N-th of `partitions`
    equal slot ranges. Deterministic (every orchestrator computes the same tags): the
    candidates `s0`, `s1`, ... are tried in order, each range taking the first that falls
    in it (about partitions x ln(partitions) tries)."""
    tags: list[str | None] = [None] * partitions
    missing, k = partitions, 0
    while missing:
        tag = f"s{k}"
        n = key_slot(tag.encode()) * partitions // REDIS_CLUSTER_HASH_SLOTS
        if tags[n] is None:
            tags[n] = tag
            missing -= 1
        k += 1
    return tuple(tag for tag in tags if tag is not None)


@dataclass(frozen=True, slots=True)
class Keys:
    prefix: str = "il"
    partitions: int = DEFAULT_PARTITIONS
    spread: bool = True  # False: the plain {pN} tags of a store set up before they spread

    def partition(self, job_id: str) -> int:
        return zlib.crc32(job_id.encode()) % self.partitions

    def tag(self, partition: int) -> str:
        return spread_tags(self.partitions)[partition] if self.spread else f"p{partition}"

    def _p(self, partition: int) -> str:
        return f"{self.prefix}:{{{self.tag(partition)}}}"

    def job(self, job_id: str) -> str:
        """Hash of one job: v (version), doc (JSON document, less its initial_data), input
        (the initial_data, JSON, written once when the job is created), leases (JSON: task id ->
        `q|<lease_ms>` or `l|<lease_ms>|<worker>|<ms>`), p:<task id> (the payload handed to
        the worker; deleted when the task ends, emptied when the job ends), o:<n> (a step
        output, written once when produced: engine/runtime/outputs.py), h:<seq> (history
        entries), and while a parallel state runs i:<n> (the
        `for_each` item of branch n, written once) and r:<n> (branch n's result, written
        when it settles): a branch's change writes its own fields, not all of them. One
        key, so a change is one HSET."""
        return f"{self._p(self.partition(job_id))}:job:{job_id}"

    def webhooks(self, partition: int) -> str:
        """Sorted set of the ends whose webhook is due (`outbox_member`), by next attempt
        (ms)."""
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

    def label_jobs(self, partition: int, client: str, label: str, value: str) -> str:
        """Sorted set of the ids of a client's jobs labelled `label`=`value`, by creation
        time (ms). (The client's name is length-prefixed; a label name holds no `=`.)"""
        return f"{self._p(partition)}:label:{len(client)}:{client}:{label}={value}"

    def job_labels(self, partition: int, client: str) -> str:
        """Hash: job id -> its labels (JSON), for each of the client's labelled jobs, so that
        the index janitor can drop an expired job's label entries."""
        return f"{self._p(partition)}:labels:{client}"

    def client_names(self, partition: int) -> str:
        """Set of the clients that have a job index (`client_jobs`) in this partition,
        written with the index's first entry and removed with its last, so the janitor finds
        every index (a client's no longer configured too) without SCAN."""
        return f"{self._p(partition)}:clients"

    def partition_of_client_index(self, key: str) -> tuple[int, str] | None:
        """(partition, client) of a `client_jobs` key, None for any other key."""
        for partition in range(self.partitions):
            head = f"{self._p(partition)}:client:"
            if key.startswith(head):
                return partition, key[len(head) :]
        return None

    def slots(self, tag: str) -> str:
        """Sorted set of a concurrency key's jobs holding a slot (`<job id>|<round>`), by
        admission number. `tag` is the key's own hash tag (engine/runtime/concurrency.py):
        its jobs span partitions, so its state lives in a slot of its own."""
        return f"{self.prefix}:{{c:{tag}}}:run"

    def slot_queue(self, tag: str) -> str:
        """Sorted set of a concurrency key's jobs waiting for a slot, by arrival number."""
        return f"{self.prefix}:{{c:{tag}}}:wait"

    def slot_counters(self, tag: str) -> str:
        """Hash of a concurrency key's counters: `seq` (arrivals), `n` (admissions)."""
        return f"{self.prefix}:{{c:{tag}}}:meta"

    def rate_bucket(self, task_type: str) -> str:
        """Hash: a rate-limited task type's token bucket (`tokens`, `at` ms), see
        engine/runtime/ratelimit.py."""
        return f"{self.prefix}:{{r:{task_type}}}:bucket"

    def worker(self, worker_id: str) -> str:
        """String: the worker's registration (JSON)."""
        return f"{self.prefix}:{{w:{worker_id}}}:worker"

    def worker_alive(self, worker_id: str) -> str:
        """String with a TTL: the worker's last heartbeat (JSON: time and current tasks)."""
        return f"{self.prefix}:{{w:{worker_id}}}:alive"

    def worker_cancels(self, worker_id: str) -> str:
        """Set of task ids the worker should cancel, answered on its next heartbeat."""
        return f"{self.prefix}:{{w:{worker_id}}}:cancel"

    @property
    def workers(self) -> str:
        """Sorted set of registered worker ids by last registration or heartbeat (ms), so the
        console can list workers without SCAN; members silent past WORKER_TTL are pruned on
        read (their registration keys have expired by then)."""
        return f"{self.prefix}:workers"

    def blueprint(self, content_hash: str) -> str:
        """String: a blueprint's canonical JSON, so any orchestrator can run pinned jobs."""
        return f"{self.prefix}:blueprint:{content_hash}"

    @property
    def meta(self) -> str:
        """Hash of deployment settings every orchestrator must agree on: partitions, and
        tags ("spread" when the partition tags are spread over the slots), the deployment
        marker, and `generated:<name>` for the tokens generated when none is configured."""
        return f"{self.prefix}:meta"

    def ready_shard(self, partition: int) -> str:
        """Sharded pub/sub on Redis Cluster: the partition's `task_type|partition` lines."""
        return f"{self._p(partition)}:ready"

    def done_shard(self, partition: int) -> str:
        """Sharded pub/sub on Redis Cluster: ids of the partition's jobs that ended."""
        return f"{self._p(partition)}:done"

    def shard_channels(self) -> list[str]:
        return [
            channel
            for p in range(self.partitions)
            for channel in (self.ready_shard(p), self.done_shard(p))
        ]

    @property
    def ready_channel(self) -> str:
        """Pub/sub: `task_type|partition` lines, one per queue that got tasks."""
        return f"{self.prefix}:ready"

    @property
    def done_channel(self) -> str:
        """Pub/sub: space-separated ids of jobs that reached a terminal status."""
        return f"{self.prefix}:done"


def outbox_member(job_id: str, end: int) -> str:
    """A job's entry in its partition's webhook outbox for its end number `end` (0: its
    first; a redrive's next end is 1, ...). Each end has an entry and an attempt count of its
    own, so the outcome of a POST for an earlier end, still on its way when the job ended
    again, can neither take out nor count against the new end's delivery."""
    return job_id if end == 0 else f"{job_id}|{end}"


def parse_member(member: str) -> tuple[str, int]:
    """(job id, end number) of an outbox entry (job ids never hold "|")."""
    job_id, _, end = member.partition("|")
    return job_id, int(end) if end else 0


def attempts_field(end: int) -> str:
    """The job hash field counting the delivery attempts of its end number `end`."""
    return "webhook_attempts" if end == 0 else f"webhook_attempts|{end}"
