"""Token checks, without HTTP: which token opens what, and what is logged."""

from __future__ import annotations

import hmac
import logging

import pytest

from server.auth import ClientAuth, RejectionLog, WorkerAuth
from server.config import WorkerTokenRule
from server.errors import Forbidden, Unauthorized

RULES = (
    WorkerTokenRule("w1", "t-w1", pattern=False, origin="workers.toml:2"),
    WorkerTokenRule("gpu-*", "t-gpu", pattern=True, origin="workers.toml:5"),
    WorkerTokenRule("gpu-7", "t-gpu7", pattern=False, origin="workers.toml:8"),
)


def test_client_tokens_map_to_names() -> None:
    auth = ClientAuth([("default", "d"), ("acme", "a")])
    assert auth.client("a") == "acme"
    assert auth.client("d") == "default"
    for token in (None, ""):
        with pytest.raises(Unauthorized, match="missing X-Client-Token header"):
            auth.client(token)
    with pytest.raises(Unauthorized, match="X-Client-Token is not valid") as caught:
        auth.client("a-but-longer")
    assert caught.value.status == 401


@pytest.mark.parametrize(
    ("worker_id", "token"),
    [
        ("w1", "t-w1"),  # its own token
        ("gpu-3", "t-gpu"),  # its fleet's pattern
        ("gpu-7", "t-gpu7"),  # an exact id inside a pattern: its own token only
        ("gpu-3", "global"),  # the global token works for every id without its own entry
        ("anyone", "global"),
    ],
)
def test_worker_tokens_accepted(worker_id: str, token: str) -> None:
    assert WorkerAuth(RULES, "global").worker(worker_id, token) == worker_id


@pytest.mark.parametrize(
    ("worker_id", "token", "reason"),
    [
        ("w1", "t-gpu", "wrong X-Worker-Token for worker 'w1'"),
        ("w1", "global", "wrong X-Worker-Token for worker 'w1'"),
        ("gpu-7", "t-gpu", "wrong X-Worker-Token for worker 'gpu-7'"),
        ("w2", "t-w1", "wrong X-Worker-Token for worker 'w2'"),
        ("cpu-1", "t-gpu", "wrong X-Worker-Token for worker 'cpu-1'"),
        (None, "t-w1", "missing X-Worker-ID header"),
        ("w1", None, "missing X-Worker-Token header"),
        ("w 1", "t-w1", "X-Worker-ID must be 1 to 128 letters, digits, _ or -"),
    ],
)
def test_worker_tokens_refused_with_403_unauthorized(
    worker_id: str | None, token: str | None, reason: str
) -> None:
    with pytest.raises(Forbidden) as caught:
        WorkerAuth(RULES, "global").worker(worker_id, token)
    assert caught.value.status == 403
    assert caught.value.message == f"Unauthorized: {reason}"


def test_without_a_global_token_only_listed_workers_get_in() -> None:
    auth = WorkerAuth(RULES, None)
    assert auth.worker("gpu-1", "t-gpu") == "gpu-1"
    with pytest.raises(Forbidden, match="no token is configured for worker 'w9'"):
        auth.worker("w9", "anything")


def test_every_candidate_is_compared(monkeypatch: pytest.MonkeyPatch) -> None:
    """No early exit: the first candidate matching still costs every comparison."""
    calls: list[bytes] = []
    real = hmac.compare_digest

    def counting(a: bytes, b: bytes) -> bool:
        calls.append(a)
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", counting)
    WorkerAuth(RULES, "global").worker("gpu-3", "t-gpu")  # pattern, then global
    assert calls == [b"t-gpu", b"global"]
    calls.clear()
    ClientAuth([("a", "x"), ("b", "y"), ("c", "z")]).client("x")
    assert calls == [b"x", b"y", b"z"]


def test_rejections_are_logged_once_per_worker_per_interval(
    caplog: pytest.LogCaptureFixture,
) -> None:
    log = RejectionLog(interval_s=60)
    auth = WorkerAuth(RULES, "global", log)
    caplog.set_level(logging.WARNING, logger="interlock.auth")
    for _ in range(3):
        with pytest.raises(Forbidden):
            auth.worker("w1", "stolen-token-value")
    with pytest.raises(Forbidden):
        auth.worker("w2", "stolen-token-value")
    assert [r.getMessage() for r in caplog.records] == [
        "worker 'w1' rejected: wrong X-Worker-Token for worker 'w1'",
        "worker 'w2' rejected: wrong X-Worker-Token for worker 'w2'",
    ]
    assert "stolen-token-value" not in caplog.text


def test_rejection_log_forgets_the_oldest_ids() -> None:
    log = RejectionLog(interval_s=60, max_ids=2)
    assert log.warn("a", "r")
    assert log.warn("b", "r")
    assert log.warn("c", "r")
    assert not log.warn("c", "r")
    assert log.warn("a", "r")  # "a" was evicted, so it is logged again
    expired = RejectionLog(interval_s=0)
    assert expired.warn("a", "r")
    assert expired.warn("a", "r")
