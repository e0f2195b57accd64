"""Who is calling: clients by `X-Client-Token`, workers by `X-Worker-Token` + `X-Worker-ID`.

Tokens are compared with `hmac.compare_digest` against every candidate, without stopping
at the first match, so the time taken does not tell which candidate (if any) matched.

Workers are refused with 403 "Unauthorized: ..." and never 401: the RXON SDK answers a 401
by calling the token service (which we do not run) before every retry, while a 403 whose
text contains "unauthorized" makes it re-register, and registration backs off (protocol
doc §6).
"""

from __future__ import annotations

import fnmatch
import hmac
import logging
import time
from collections import OrderedDict
from collections.abc import Sequence

from server.config import WORKER_ID, Settings, WorkerTokenRule
from server.errors import Forbidden, Unauthorized

log = logging.getLogger("interlock.auth")

CLIENT_HEADER = "X-Client-Token"
WORKER_TOKEN_HEADER = "X-Worker-Token"
WORKER_ID_HEADER = "X-Worker-ID"


def _bytes(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


def _matches(candidates: Sequence[bytes], given: bytes) -> list[bool]:
    """compare_digest against each candidate; every one is compared, whatever the outcome."""
    return [hmac.compare_digest(candidate, given) for candidate in candidates]


class ClientAuth:
    def __init__(self, tokens: Sequence[tuple[str, str]]) -> None:
        self._names = [name for name, _ in tokens]
        self._tokens = [_bytes(token) for _, token in tokens]

    @classmethod
    def from_settings(cls, settings: Settings) -> ClientAuth:
        return cls(settings.client_tokens)

    def client(self, token: str | None) -> str:
        """The client name for a token; raises Unauthorized (401)."""
        if not token:
            raise Unauthorized(f"missing {CLIENT_HEADER} header", code="missing_client_token")
        matched = _matches(self._tokens, _bytes(token))
        for name, hit in zip(self._names, matched, strict=True):
            if hit:
                return name
        raise Unauthorized(f"the {CLIENT_HEADER} is not valid", code="invalid_client_token")


#: The task types a worker may poll, as globs; None when any.
TaskTypes = frozenset[str] | None


class WorkerAuth:
    """Worker tokens: a worker id with its own `workers.toml` entry is bound to that entry's
    token (neither a fleet's nor the global token opens it); any other id may use the token
    of a fleet pattern it matches, or the global `WORKER_TOKEN`."""

    def __init__(
        self,
        rules: Sequence[WorkerTokenRule],
        global_token: str | None,
        rejections: RejectionLog | None = None,
    ) -> None:
        self._exact = {rule.selector: _candidate(rule) for rule in rules if not rule.pattern}
        self._patterns = [(rule.selector, _candidate(rule)) for rule in rules if rule.pattern]
        self._global = (_bytes(global_token), None) if global_token is not None else None
        self.rejections = rejections or RejectionLog()

    @classmethod
    def from_settings(cls, settings: Settings) -> WorkerAuth:
        return cls(settings.worker_rules, settings.worker_token)

    def candidates(self, worker_id: str) -> list[tuple[bytes, TaskTypes]]:
        """(token, task types) this worker may present: its own entry's alone if it has
        one; else its fleets' and the global one."""
        if worker_id in self._exact:
            return [self._exact[worker_id]]
        found = [c for pattern, c in self._patterns if fnmatch.fnmatchcase(worker_id, pattern)]
        if self._global is not None:
            found.append(self._global)
        return found

    def worker(self, worker_id: str | None, token: str | None) -> str:
        """The authenticated worker id; raises Forbidden (403, "Unauthorized: ...")."""
        return self.authenticate(worker_id, token)[0]

    def authenticate(self, worker_id: str | None, token: str | None) -> tuple[str, TaskTypes]:
        """(worker id, the task types its token lets it poll); raises Forbidden."""
        reason, task_types = self._reason(worker_id, token)
        if reason is None:
            assert worker_id is not None
            return worker_id, task_types
        self.rejections.warn(worker_id or "", reason)
        raise Forbidden(f"Unauthorized: {reason}", code="worker_unauthorized")

    def _reason(self, worker_id: str | None, token: str | None) -> tuple[str | None, TaskTypes]:
        if not worker_id:
            return f"missing {WORKER_ID_HEADER} header", None
        if not WORKER_ID.match(worker_id):
            return f"{WORKER_ID_HEADER} must be 1 to 128 letters, digits, _ or -", None
        if not token:
            return f"missing {WORKER_TOKEN_HEADER} header", None
        candidates = self.candidates(worker_id)
        if not candidates:
            return f"no token is configured for worker {worker_id!r}", None
        matched = _matches([c[0] for c in candidates], _bytes(token))
        hits = [types for (_, types), hit in zip(candidates, matched, strict=True) if hit]
        if not hits:  # (an id with its own entry had only that entry's token to match)
            return f"wrong {WORKER_TOKEN_HEADER} for worker {worker_id!r}", None
        if any(types is None for types in hits):
            return None, None
        return None, frozenset().union(*(types for types in hits if types is not None))

    def mismatch(self, header_id: str, path_id: str) -> Forbidden:
        """The error for a path naming another worker than the authenticated one."""
        reason = f"the path names worker {path_id[:128]!r} but {WORKER_ID_HEADER} is {header_id!r}"
        self.rejections.warn(header_id, reason)
        return Forbidden(f"Unauthorized: {reason}", code="worker_unauthorized")


def _candidate(rule: WorkerTokenRule) -> tuple[bytes, TaskTypes]:
    types = frozenset(rule.task_types) if rule.task_types is not None else None
    return _bytes(rule.token), types


def may_poll(task_types: TaskTypes, task_type: str) -> bool:
    """Whether a worker restricted to `task_types` (globs) may poll `task_type`."""
    if task_types is None:
        return True
    return any(fnmatch.fnmatchcase(task_type, allowed) for allowed in task_types)


class RejectionLog:
    """One warning per worker id per `interval_s`, so a misconfigured fleet cannot flood the
    log (a rejected worker retries for ever: polls every 0.5 s). Bounded in size, since the
    ids come from unauthenticated requests."""

    def __init__(self, interval_s: float = 60.0, max_ids: int = 10_000) -> None:
        self.interval_s = interval_s
        self.max_ids = max_ids
        self._last: OrderedDict[str, float] = OrderedDict()

    def warn(self, worker_id: str, reason: str) -> bool:
        """Log the rejection unless this id was logged recently; True when logged."""
        now = time.monotonic()
        key = worker_id[:128]
        last = self._last.get(key)
        if last is not None and now - last < self.interval_s:
            return False
        self._last[key] = now
        self._last.move_to_end(key)
        while len(self._last) > self.max_ids:
            self._last.popitem(last=False)
        log.warning("worker %r rejected: %s", key, reason)
        return True
