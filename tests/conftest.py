"""Shared fixtures. Tests that need an external program fail (not skip) under CI=true."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tests.support.redis_cluster import RedisCluster
from tests.support.redis_server import RedisServer

ROOT = Path(__file__).resolve().parent.parent
BLUEPRINTS = ROOT / "blueprints"
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def require_program(name: str, hint: str) -> str:
    """Path of `name`; skip locally when missing, but fail in CI."""
    path = shutil.which(name)
    if path is None:
        message = f"`{name}` is not installed ({hint})"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    return path


def require_file(path: Path, hint: str) -> Path:
    """`path`; skip locally when missing, but fail in CI."""
    if not path.exists():
        message = f"{path} is missing (run `{hint}`)"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    return path


@pytest.fixture
def dot_program() -> str:
    return require_program("dot", "apt-get install graphviz")


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """One real redis-server per test session, on a free port."""
    server = RedisServer(require_program("redis-server", "apt-get install redis-server"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """The session's Redis, flushed before each test."""
    with redis.Redis.from_url(redis_server.url) as client:
        client.flushall()
    return redis_server.url


@pytest.fixture(params=["redis", "memory"])
def store_url(request: pytest.FixtureRequest) -> str:
    """Run a test against a real Redis and against the embedded `memory://` store."""
    if request.param == "memory":
        return "memory://"
    url: str = request.getfixturevalue("redis_url")
    return url


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[RedisCluster]:
    """One real Redis Cluster per test session: three masters, three replicas."""
    cluster = RedisCluster(
        require_program("redis-server", "apt-get install redis-server"),
        require_program("redis-cli", "apt-get install redis-tools"),
    )
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def cluster_url(redis_cluster: RedisCluster) -> str:
    """The session's cluster, healed (after a test killed or failed over a node) and
    flushed before each test."""
    redis_cluster.heal()
    redis_cluster.flush()
    return redis_cluster.url


@pytest.fixture(params=["redis", "cluster"])
def any_redis_url(request: pytest.FixtureRequest) -> str:
    """Run an end-to-end test on one Redis and on a Redis Cluster."""
    url: str = request.getfixturevalue(f"{request.param}_url")
    return url


@pytest.fixture(params=["memory", "redis", "cluster"])
def every_store_url(request: pytest.FixtureRequest) -> str:
    """Run a test on the embedded store, one Redis and a Redis Cluster."""
    if request.param == "memory":
        return "memory://"
    url: str = request.getfixturevalue(f"{request.param}_url")
    return url
