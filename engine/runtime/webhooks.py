"""Webhook delivery: at least once, signed, retried with backoff.

A job with a `webhook_url` enters its partition's webhook outbox in the same commit that
makes it terminal, so a crash right after cannot lose the notification. The orchestrator
that made that commit sends the first attempt at once (the commit holds the entry for it);
any orchestrator claims the entries that fall due later (for a minute), in batches, POSTs
them, and removes them once the receiver answers 2xx. A failed attempt is rescheduled, a
dead orchestrator's hold or claim simply expires (see engine/runtime/background.py).

Receivers verify `X-Interlock-Signature: t=<unix seconds>,v1=<hex>`, where the hex is
HMAC-SHA256(secret, "<t>.<raw body>").
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any
from urllib.parse import urlsplit

from engine.jsonutil import dumps

log = logging.getLogger("interlock.webhooks")

#: POSTs `body` to `url` with `headers`; returns the HTTP status, raises OSError when the
#: receiver cannot be reached. The server provides one built on aiohttp.
Sender = Callable[[str, bytes, Mapping[str, str]], Awaitable[int]]

MAX_ATTEMPTS = 12  # about 1 s, 2 s, 4 s ... capped at 10 min: some 40 min in all


def payload(doc: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "event": f"job_{doc['status']}",
        "job_id": doc["id"],
        "blueprint": doc["blueprint"],
        "version": doc["version"],
        "status": doc["status"],
        "state": doc["state"],
        "result": doc.get("result"),
        "error": doc.get("error"),
        "finished_at": doc.get("finished_at"),
    }


def signature(secret: str, timestamp: int, body: bytes) -> str:
    signed = f"{timestamp}.".encode() + body
    digest = hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


def verify(secret: str, header: str, body: bytes, *, tolerance_s: int = 300) -> bool:
    """Check a signature header as a receiver would (used by the tests and the docs)."""
    try:
        parts = dict(item.split("=", 1) for item in header.split(","))
        timestamp = int(parts["t"])
    except (ValueError, KeyError):
        return False
    if abs(time.time() - timestamp) > tolerance_s:
        return False
    return hmac.compare_digest(signature(secret, timestamp, body), header)


def request(doc: Mapping[str, Any], secret: str, attempt: int) -> tuple[bytes, dict[str, str]]:
    body = dumps(payload(doc)).encode()
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "Interlock-Webhook/1",
        "X-Interlock-Event": f"job_{doc['status']}",
        "X-Interlock-Delivery": f"{doc['id']}-{attempt}",
        "X-Interlock-Signature": signature(secret, int(time.time()), body),
    }
    return body, headers


def backoff_ms(attempt: int) -> int:
    return int(min(600.0, 2.0 ** (attempt - 1)) * 1000)


def redact(url: object) -> str:
    """A webhook URL for logs: scheme, host and port only. User-info, path and query may
    hold secrets (`https://user:pass@host/`, `https://hooks.example/T0/B0/secret`)."""
    try:
        parts = urlsplit(str(url))
        host = parts.hostname or "?"
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "<malformed URL>"
    host = f"[{host}]" if ":" in host else host
    return f"{parts.scheme}://{host}{port}/..."
