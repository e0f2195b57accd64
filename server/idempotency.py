"""Idempotent job submission: the `Idempotency-Key` header, or a client-chosen `job_id`.

A client that retries a submit (a timeout, a dropped connection) must not get a second job.
Either way the job's id is decided by the request, so the store's create guard (a job id is
created once) decides atomically, across orchestrators, which request made it; a request
that finds the job already there compares the fingerprint of its body with the one the job
keeps: the same request answers the existing job, a different one is a conflict. A key or
an id lives as long as its job (the retention window after the job ends).

- `Idempotency-Key: <key>`: the job's id is a digest of (client, key), opaque.
- `"job_id": "<id>"` in the body: the job's id is `<id>-<client tag>`, readable in the
  console, logs and webhooks. Job ids are one namespace in the store (a key per job, its
  partition from the id), so the tag, 12 hex digits of a digest of the client's name, keeps
  each client's ids apart: another client's `order-42` is another job, and no answer tells a
  client that another one used the id. The tag is the same for every job of a client.
  A field rather than a header, as Step Functions' execution `name` and Temporal's
  `WorkflowId` are fields of the start request: it names the resource made, not the attempt.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from server.errors import BadRequest, Conflict

HEADER = "Idempotency-Key"
FIELD = "job_id"  # the body field of a client-chosen job id
FINGERPRINT = "request_fingerprint"  # the job document's field
KEY = re.compile(r"^[\x21-\x7e]{1,255}$")  # printable ASCII, no spaces
CHOSEN_ID = re.compile(r"^[A-Za-z0-9_-]{1,100}$")  # + "-" + a 12-digit tag: 113 <= 128
TAG_DIGITS = 12


@dataclass(frozen=True, slots=True)
class Once:
    """How a submit names its job: the id, and how a conflict names what was reused."""

    job_id: str
    what: str  # "Idempotency-Key 'k1'", "job_id 'order-42'"
    code: str
    details: Mapping[str, str]


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


def chosen_id_problem(value: Any) -> str | None:
    """Why `value` cannot be a client-chosen job id, or None when it can."""
    if isinstance(value, str) and CHOSEN_ID.match(value):
        return None
    shown = repr(value)[:60] if isinstance(value, str) else f"a {type(value).__name__}"
    return f"must be 1 to 100 letters, digits, _ or - (e.g. order-42), not {shown}"


def by_key(client: str, key: str) -> Once:
    """The job that `client` submits with `key`: the same id every time, and a different
    one for another client with the same key."""
    job_id = hashlib.sha256(f"idempotency\0{client}\0{key}".encode()).hexdigest()[:32]
    return Once(job_id, f"{HEADER} {key!r}", "idempotency_key_reused", {"header": HEADER})


def by_chosen_id(client: str, chosen: str) -> Once:
    """The job that `client` names `chosen`: `<chosen>-<client tag>`."""
    tag = hashlib.sha256(f"job id namespace\0{client}".encode()).hexdigest()[:TAG_DIGITS]
    return Once(f"{chosen}-{tag}", f"{FIELD} {chosen!r}", "job_id_reused", {"field": FIELD})


def fingerprint(endpoint: str, body: dict[str, Any]) -> str:
    """What identifies the request: its endpoint and its body, keys in any order."""
    canonical = json.dumps([endpoint, body], sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def check_replay(doc: Mapping[str, Any], once: Once, expected: str) -> None:
    """A request found its job: a 409 unless it is the same request again."""
    if doc.get(FINGERPRINT) != expected:
        raise Conflict(
            f"the {once.what} was already used for a different request (another "
            f"endpoint or body); use a new one for a new job",
            code=once.code,
            details={**once.details, "job_id": doc.get("id")},
        )
