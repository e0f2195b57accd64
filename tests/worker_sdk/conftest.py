"""Fixtures for the worker SDK tests: a real S3-compatible server (moto in server mode)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from moto.server import ThreadedMotoServer

from tests.support.redis_server import free_port
from worker_sdk import S3Config

S3_KEY, S3_SECRET = "test-access-key", "test-secret-key"


@pytest.fixture(scope="session")
def s3_url() -> Iterator[str]:
    """One moto S3 server per session, reached over HTTP exactly as a real endpoint."""
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture
def s3(s3_url: str) -> Any:
    """A plain (sync) boto3 client, for the test's own checks."""
    return boto3.client(
        "s3",
        endpoint_url=s3_url,
        aws_access_key_id=S3_KEY,
        aws_secret_access_key=S3_SECRET,
        region_name="us-east-1",
    )


@pytest.fixture
def bucket(s3: Any) -> str:
    name = f"b-{uuid.uuid4().hex[:16]}"
    s3.create_bucket(Bucket=name)
    return name


@pytest.fixture
def s3_config(s3_url: str, bucket: str) -> S3Config:
    return S3Config(bucket, s3_url, S3_KEY, S3_SECRET, part_size=5 * 1024 * 1024)


def s3_env(s3_url: str, bucket: str) -> dict[str, str]:
    """The variables a worker process needs to offload payloads to `bucket`."""
    return {
        "S3_ENDPOINT_URL": s3_url,
        "S3_ACCESS_KEY": S3_KEY,
        "S3_SECRET_KEY": S3_SECRET,
        "S3_BUCKET": bucket,
    }
