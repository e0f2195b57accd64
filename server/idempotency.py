"""Idempotent job submission: the `Idempotency-Key` header.

A client that retries a submit (a timeout, a dropped connection) must not get a second job.
With `Idempotency-Key: <key>`, the job's id is derived from (client, key), so the store's
create guard (a job id is created once) decides atomically which request made it; a request
that finds the job already there compares the fingerprint of its body with the one the job
keeps: the same request answers the existing job, a different one is a conflict. The key
lives as long as its job (the retention window after the job ends).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from typing import Any

from server.errors import BadRequest, Conflict

HEADER = "Idempotency-Key"
FINGERPRINT = "request_fingerprint"  # the job document's field
KEY = re.compile(r"^[\x21-\x7e]{1,255}$")  # printable ASCII, no spaces


def idempotency_key(headers: Any) -> str | None:
    """The request's key, or None; a malformed one is a 400 naming the header."""
    key = headers.get(HEADER)
    if key is None:
        return None
    if not KEY.match(key):
        raise BadRequest(
            f"header {HEADER} must be 1 to 255 printable ASCII characters without spaces "
            "(a UUID is a good choice)",
            code="invalid_header",
            details={"header": HEADER},
        )
    return str(key)


def job_id_for(client: str, key: str) -> str:
    """The id of the job that `client` submits with `key`: the same every time, and
    different for another client with the same key."""
    return hashlib.sha256(f"idempotency\0{client}\0{key}".encode()).hexdigest()[:32]


def fingerprint(endpoint: str, body: dict[str, Any]) -> str:
    """What identifies the request: its endpoint and its body, keys in any order."""
    canonical = json.dumps([endpoint, body], sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def check_replay(doc: Mapping[str, Any], key: str, expected: str) -> None:
    """A request with `key` found its job: a 409 unless it is the same request again."""
    if doc.get(FINGERPRINT) != expected:
        raise Conflict(
            f"the {HEADER} {key!r} was already used for a different request (another "
            "endpoint or body); use a new key for a new job",
            code="idempotency_key_reused",
            details={"header": HEADER, "job_id": doc.get("id")},
        )
