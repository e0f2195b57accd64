"""The server fixtures (example blueprints on memory://, two clients, a worker fleet)."""

from tests.server.conftest import api, orchestrator, settings

__all__ = ["api", "orchestrator", "settings"]
