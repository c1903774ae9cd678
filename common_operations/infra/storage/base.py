"""The one interface every storage backend (local disk, S3/MinIO) implements.

Synchronous on purpose: the bulk activities stream files in worker threads, and the ``minio``
client is synchronous. Keys are built by :mod:`common_operations.domain.files`, never from user input.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import BinaryIO, Protocol

from common_operations.domain.errors import DomainError, ErrorKind


class ObjectNotFound(DomainError):
    """No object has the key (``open_read`` of a missing object; REST answers 404 ``NOT_FOUND``)."""

    code = "NOT_FOUND"
    kind = ErrorKind.NOT_FOUND


@dataclass(frozen=True, slots=True)
class SignedUrl:
    """A URL that grants one operation on one object until ``expires_at``."""

    url: str
    expires_at: datetime


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    """What a stored object is."""

    key: str
    size: int
    content_type: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)


class ObjectWriter(Protocol):
    """A write-only stream into a new object; committed when its context exits without error."""

    def write(self, data: bytes, /) -> int:
        """Append ``data``; returns its length."""
        ...

    @property
    def bytes_written(self) -> int:
        """How many bytes were written so far."""
        ...


class Storage(Protocol):
    """Object storage for task inputs, outputs and result files."""

    name: str

    def ensure_ready(self) -> None:
        """Create the bucket or directory where allowed; raise a clear error where it cannot be used."""
        ...

    def presign_upload(
        self, key: str, *, expires: timedelta, max_size: int, content_type: str | None = None
    ) -> SignedUrl:
        """A URL that accepts one HTTP PUT of the object's bytes until it expires."""
        ...

    def presign_download(
        self,
        key: str,
        *,
        expires: timedelta,
        download_name: str | None = None,
        content_type: str | None = None,
    ) -> SignedUrl:
        """A URL that serves the object with GET until it expires.

        ``download_name`` becomes the ``Content-Disposition`` file name; it must already be sanitized.
        """
        ...

    def stat(self, key: str) -> ObjectInfo | None:
        """The object, or None when it does not exist (yet): uploads appear only once complete."""
        ...

    def open_read(self, key: str, offset: int = 0) -> AbstractContextManager[BinaryIO]:
        """A readable binary stream of the object from byte ``offset`` (constant memory)."""
        ...

    def open_write(
        self, key: str, *, content_type: str, metadata: dict[str, str] | None = None
    ) -> AbstractContextManager[ObjectWriter]:
        """A stream into a new object (multipart on S3).

        Nothing is visible unless the block ends without an exception; then the object replaces any
        earlier one under ``key``.
        """
        ...

    def delete_prefix(self, prefix: str) -> int:
        """Delete every object whose key starts with ``prefix``; how many were deleted."""
        ...

    def iter_keys(self, prefix: str) -> Iterator[str]:
        """Keys under ``prefix``, in no particular order."""
        ...
