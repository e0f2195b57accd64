"""The server fixtures (example blueprints on memory://, two clients, a worker fleet) and
the S3 ones (a moto server in server mode)."""

from tests.server.conftest import api, orchestrator, settings
from tests.worker_sdk.conftest import bucket, s3, s3_config, s3_url

__all__ = ["api", "bucket", "orchestrator", "s3", "s3_config", "s3_url", "settings"]
