"""Fixtures for the server tests: the real example blueprints on the embedded store, served
by aiohttp's TestServer, with two clients and a small worker fleet configured."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from engine.blueprint.loader import load_blueprints
from engine.runtime.orchestrator import Orchestrator
from engine.runtime.registry import Registry
from engine.store.client import Store
from server.app import build_app_around, orchestrator_settings, runtime_settings
from server.config import Settings
from tests.server.helpers import BLUEPRINTS, WORKER_TOKEN, Client

CLIENTS_TOML = """\
[acme]
token = "acme-token"

[globex]
token = "globex-token"
"""

WORKERS_TOML = """\
[w-solo]
token = "solo-token"

["gpu-*"]
token = "gpu-token"

["pattern:cpu-?"]
token = "cpu-token"
"""


def make_settings(tmp_path: Path, **env: str) -> Settings:
    clients = tmp_path / "clients.toml"
    clients.write_text(CLIENTS_TOML, encoding="utf-8")
    workers = tmp_path / "workers.toml"
    workers.write_text(WORKERS_TOML, encoding="utf-8")
    base = {
        "BLUEPRINTS_DIR": str(BLUEPRINTS),
        "CLIENTS_CONFIG_PATH": str(clients),
        "WORKERS_CONFIG_PATH": str(workers),
        "WORKER_TOKEN": WORKER_TOKEN,
    }
    return Settings.from_sources({**base, **env}, {})


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return make_settings(tmp_path)


@contextlib.asynccontextmanager
async def started(settings: Settings, url: str = "memory://") -> AsyncIterator[Orchestrator]:
    """An orchestrator with the example blueprints on the store at `url`, started."""
    store = await Store.connect(url, partitions=settings.redis_partitions)
    registry = Registry(load_blueprints([BLUEPRINTS]), runtime_settings(settings))
    orch = Orchestrator(store, registry, orchestrator_settings(settings))
    await orch.start()
    try:
        yield orch
    finally:
        await orch.stop()
        await store.close()


@pytest.fixture
async def orchestrator(settings: Settings) -> AsyncIterator[Orchestrator]:
    async with started(settings) as orch:
        yield orch


async def serve(app: web.Application) -> Client:
    client = TestClient(TestServer(app))
    await client.start_server()
    return client


@pytest.fixture
async def api(orchestrator: Orchestrator, settings: Settings) -> AsyncIterator[Client]:
    client = await serve(build_app_around(orchestrator, settings))
    try:
        yield client
    finally:
        await client.close()
