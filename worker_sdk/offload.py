"""A result too large for the orchestrator, sent with its largest values moved to S3.

An orchestrator refuses a request body over its limit with 413; Interlock's answer names the
limit (`{"error": {"details": {"max_bytes": N}}}`, its `MAX_BODY_BYTES`). With S3 offloading
on, the worker then uploads the largest top-level values of the result's `data`, largest
first, each as one JSON object `s3://<S3_BUCKET>/<job_id>/<task_id>/_values/<key>.json`,
and puts the object's URI in the value's place, until the body fits under that limit. Small
values stay inline, so expressions such as `steps.x.count` still see them; the URIs are what
a task's file uploads already produce, so the next task's worker downloads each one to a
local file (its params hold that file's path) and a client reads it from the bucket.

When the refusal names no limit (another RXON server), every value the URI is shorter than
is moved: the most that can be done without guessing the limit. When even that cannot fit,
nothing is uploaded and the caller reports RESULT_TOO_LARGE.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Protocol

#: Around the result in `POST /tasks/results` (`{"results":[...]}`): the body a 413 measured.
BATCH_WRAPPER_BYTES = len(b'{"results":[]}')


class ValueStore(Protocol):
    """Where values go: worker_sdk/s3.py's PayloadStore."""

    def value_uri(self, job_id: str, task_id: str, name: str) -> str: ...

    async def put_bytes(self, uri: str, data: bytes) -> None: ...


def encode(value: Any) -> bytes:
    """JSON as the worker sends it: compact UTF-8."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


def plan(body: Mapping[str, Any], max_bytes: int | None, store: ValueStore) -> dict[str, str]:
    """The keys of `body["data"]` to move, each with its URI, for the body to fit in
    `max_bytes` (None: unknown). Empty when no choice of values makes it fit."""
    data = body.get("data")
    if not isinstance(data, Mapping):
        return {}
    size = len(encode(body)) + BATCH_WRAPPER_BYTES
    by_size = sorted(((len(encode(value)), key) for key, value in data.items()), reverse=True)
    chosen: dict[str, str] = {}
    for value_size, key in by_size:
        if max_bytes is not None and size <= max_bytes:
            break
        uri = store.value_uri(str(body["job_id"]), str(body["task_id"]), key)
        saved = value_size - len(encode(uri))
        if saved > 0:
            chosen[key] = uri
            size -= saved
    if max_bytes is not None and size > max_bytes:
        return {}
    return chosen


async def offload(
    body: Mapping[str, Any], max_bytes: int | None, store: ValueStore
) -> tuple[dict[str, Any], list[str]] | None:
    """`body` with values moved to S3 so that it fits in `max_bytes`, and the keys moved;
    None when it cannot fit. Raises PayloadTransferError when an upload fails."""
    chosen = plan(body, max_bytes, store)
    if not chosen:
        return None
    data: Mapping[str, Any] = body["data"]
    for key, uri in chosen.items():
        await store.put_bytes(uri, encode(data[key]))
    smaller = {**body, "data": {key: chosen.get(key, value) for key, value in data.items()}}
    return smaller, list(chosen)
