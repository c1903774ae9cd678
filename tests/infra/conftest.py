"""An in-process S3 server (moto) for the storage tests, and a fresh bucket per test."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator

import pytest
from moto.server import ThreadedMotoServer

from common_operations.config import S3Settings
from common_operations.infra.storage.s3 import MIN_PART_SIZE, S3Storage


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """``host:port`` of a moto S3 server for the whole session (port 0: a free one)."""
    # moto logs every request through werkzeug.
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"{host}:{port}"
    finally:
        server.stop()


@pytest.fixture
def s3_settings(s3_endpoint: str) -> S3Settings:
    """Settings of a bucket of its own for this test (created by ``ensure_ready``)."""
    return S3Settings(
        endpoint=s3_endpoint,
        access_key="testing",
        secret_key="testing",
        secure=False,
        region="us-east-1",
        bucket=f"co-test-{uuid.uuid4().hex[:12]}",
        create_bucket=True,
    )


@pytest.fixture
def s3_storage(s3_settings: S3Settings) -> S3Storage:
    """An S3 storage on a fresh, ready bucket, with S3's smallest part size."""
    storage = S3Storage(s3_settings, part_size=MIN_PART_SIZE)
    storage.ensure_ready()
    return storage
