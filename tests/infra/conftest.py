"""A storage on a fresh bucket of the session's moto S3 server (tests/conftest.py) per test."""

from __future__ import annotations

import pytest

from common_operations.config import S3Settings
from common_operations.infra.storage.s3 import MIN_PART_SIZE, S3Storage


@pytest.fixture
def s3_storage(s3_settings: S3Settings) -> S3Storage:
    """An S3 storage on a fresh, ready bucket, with S3's smallest part size."""
    storage = S3Storage(s3_settings, part_size=MIN_PART_SIZE)
    storage.ensure_ready()
    return storage
