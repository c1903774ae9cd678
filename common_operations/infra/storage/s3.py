"""Objects in an S3-compatible bucket (MinIO, AWS S3; moto in tests), through the ``minio`` client.

Clients up- and download directly with presigned URLs. A plain presigned PUT cannot limit the upload's
size: the service checks it after the upload with
:func:`common_operations.infra.storage.check_uploaded_size`. Its content type is not enforced either.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import BinaryIO, cast
from urllib.parse import urlsplit

import urllib3
from minio import Minio
from minio.datatypes import Part
from minio.deleteobjects import DeleteObject
from minio.error import S3Error

from common_operations.config import S3Settings
from common_operations.domain.errors import ServiceUnavailable
from common_operations.domain.files import InvalidKey, content_disposition, validate_key
from common_operations.infra.storage.base import ObjectInfo, ObjectNotFound, ObjectWriter, SignedUrl

DEFAULT_PART_SIZE = 8 * 1024 * 1024
MIN_PART_SIZE = 5 * 1024 * 1024  # S3 rejects smaller parts, except the last one
_MISSING = frozenset({"NoSuchKey", "NoSuchObject", "NotFound", "ResourceNotFound"})
_META_PREFIX = "x-amz-meta-"


class StorageUnavailable(ServiceUnavailable):
    """The object store cannot be reached or its bucket cannot be used."""

    code = "STORAGE_UNAVAILABLE"


def _endpoint(value: str, secure: bool) -> tuple[str, bool]:
    """``host:port`` and whether to use TLS; a URL's scheme overrides ``secure``."""
    if "://" in value:
        parts = urlsplit(value)
        return parts.netloc, parts.scheme == "https"
    return value, secure


class _MultipartWriter:
    """An :class:`ObjectWriter` buffering one part at a time, uploaded as it fills."""

    def __init__(self, storage: S3Storage, key: str, headers: dict[str, str]) -> None:
        self._storage = storage
        self._key = key
        self._headers = headers
        self._buffer = bytearray()
        self._written = 0
        self.upload_id: str | None = None
        self.parts: list[Part] = []

    def write(self, data: bytes, /) -> int:
        self._buffer += data
        self._written += len(data)
        while len(self._buffer) >= self._storage.part_size:
            self._upload(bytes(self._buffer[: self._storage.part_size]))
            del self._buffer[: self._storage.part_size]
        return len(data)

    @property
    def bytes_written(self) -> int:
        return self._written

    def _upload(self, data: bytes) -> None:
        client, bucket = self._storage.client, self._storage.bucket
        if self.upload_id is None:
            self.upload_id = client._create_multipart_upload(bucket, self._key, dict(self._headers))
        number = len(self.parts) + 1
        etag = client._upload_part(bucket, self._key, data, None, self.upload_id, number)
        self.parts.append(Part(number, etag))

    def commit(self) -> None:
        """Complete the upload (or store a small object with one PUT)."""
        client, bucket = self._storage.client, self._storage.bucket
        if self.upload_id is None:
            data = bytes(self._buffer)
            client.put_object(
                bucket,
                self._key,
                io.BytesIO(data),
                len(data),
                content_type=self._headers["Content-Type"],
                metadata={k: v for k, v in self._headers.items() if k.startswith(_META_PREFIX)},
            )
            return
        if self._buffer:
            self._upload(bytes(self._buffer))
            self._buffer.clear()
        client._complete_multipart_upload(bucket, self._key, self.upload_id, self.parts)

    def abort(self) -> None:
        """Drop the uploaded parts: the object never appears."""
        self._buffer.clear()
        if self.upload_id is not None:
            self._storage.client._abort_multipart_upload(self._storage.bucket, self._key, self.upload_id)


class S3Storage:
    """:class:`Storage` on one bucket of an S3-compatible endpoint."""

    name = "s3"

    def __init__(self, settings: S3Settings, *, part_size: int = DEFAULT_PART_SIZE) -> None:
        """Connect lazily (no request is made here).

        Args:
            settings: the endpoint, credentials and bucket.
            part_size: bytes of one multipart part, buffered in memory while writing. S3 needs at
                least 5 MiB (all parts but the last).
        """
        if part_size < MIN_PART_SIZE:
            raise ValueError(f"part_size must be at least {MIN_PART_SIZE} bytes (S3's smallest part)")
        self.settings = settings
        self.bucket = settings.bucket
        self.part_size = part_size
        endpoint, secure = _endpoint(settings.endpoint, settings.secure)
        # Few, quick retries: an unreachable endpoint should fail start-up in seconds, not minutes.
        http = urllib3.PoolManager(
            timeout=urllib3.Timeout(connect=5.0, read=60.0),
            retries=urllib3.Retry(total=2, backoff_factor=0.2, status_forcelist=[500, 502, 503, 504]),
            maxsize=16,
        )
        # A fixed region spares the client a GetBucketLocation request, so presigning is offline.
        self.client = Minio(
            endpoint,
            access_key=settings.access_key,
            secret_key=settings.secret_key,
            secure=secure,
            region=settings.region,
            http_client=http,
        )
        self._presigner = self.client
        if settings.public_endpoint:
            public, public_secure = _endpoint(settings.public_endpoint, secure)
            # Used only to sign URLs for the host clients see; it never sends a request.
            self._presigner = Minio(
                public,
                access_key=settings.access_key,
                secret_key=settings.secret_key,
                secure=public_secure,
                region=settings.region,
            )

    def ensure_ready(self) -> None:
        """Create the bucket when it is missing and allowed.

        Raises:
            StorageUnavailable: the endpoint cannot be reached, or the bucket is missing and may not
                be created.
        """
        where = f"bucket {self.bucket!r} at {self.settings.endpoint}"
        try:
            if self.client.bucket_exists(self.bucket):
                return
            if not self.settings.create_bucket:
                raise StorageUnavailable(f"the {where} does not exist (storage.s3.create_bucket is off)")
            self.client.make_bucket(self.bucket)
        except S3Error as exc:
            if exc.code == "BucketAlreadyOwnedByYou":
                return
            raise StorageUnavailable(f"the {where} cannot be used: {exc.code}: {exc.message}") from exc
        except urllib3.exceptions.HTTPError as exc:
            raise StorageUnavailable(f"the {where} cannot be reached: {exc}") from exc

    def presign_upload(
        self, key: str, *, expires: timedelta, max_size: int, content_type: str | None = None
    ) -> SignedUrl:
        """A presigned PUT URL; ``max_size`` and ``content_type`` are checked after the upload only."""
        validate_key(key)
        expires_at = datetime.now(UTC) + expires
        url = self._presigner.presigned_put_object(self.bucket, key, expires=expires)
        return SignedUrl(url=url, expires_at=expires_at)

    def presign_download(
        self,
        key: str,
        *,
        expires: timedelta,
        download_name: str | None = None,
        content_type: str | None = None,
    ) -> SignedUrl:
        """A presigned GET URL; the store answers with the given disposition and content type."""
        validate_key(key)
        headers: dict[str, str | list[str] | tuple[str]] = {}
        if download_name:
            headers["response-content-disposition"] = content_disposition(download_name)
        if content_type:
            headers["response-content-type"] = content_type
        expires_at = datetime.now(UTC) + expires
        url = self._presigner.presigned_get_object(
            self.bucket, key, expires=expires, response_headers=headers or None
        )
        return SignedUrl(url=url, expires_at=expires_at)

    def stat(self, key: str) -> ObjectInfo | None:
        """The object, or None when it does not exist (multipart uploads appear once completed)."""
        validate_key(key)
        try:
            obj = self.client.stat_object(self.bucket, key)
        except S3Error as exc:
            if exc.code in _MISSING:
                return None
            raise
        metadata = {
            name[len(_META_PREFIX) :]: str(value)
            for name, value in (obj.metadata or {}).items()
            if name.lower().startswith(_META_PREFIX)
        }
        return ObjectInfo(key=key, size=obj.size or 0, content_type=obj.content_type, metadata=metadata)

    @contextlib.contextmanager
    def open_read(self, key: str, offset: int = 0) -> Iterator[BinaryIO]:
        """The object's bytes from ``offset`` as a stream (a ranged GET); the connection is released on exit.

        Raises:
            ObjectNotFound: no object has the key.
        """
        if offset < 0:
            raise ValueError("offset must not be negative")
        validate_key(key)
        try:
            response = self.client.get_object(self.bucket, key, offset=offset)
        except S3Error as exc:
            if exc.code in _MISSING:
                raise ObjectNotFound(f"no object has the key {key!r}", key=key) from None
            if exc.code == "InvalidRange":
                # At or past the end: nothing left to read, as a file read at EOF.
                yield io.BytesIO()
                return
            raise
        try:
            # urllib3's response is a readable io.IOBase, which is all callers use of BinaryIO.
            yield cast(BinaryIO, response)
        finally:
            response.close()
            response.release_conn()

    @contextlib.contextmanager
    def open_write(
        self, key: str, *, content_type: str, metadata: dict[str, str] | None = None
    ) -> Iterator[ObjectWriter]:
        """A multipart upload of parts of ``part_size`` bytes; aborted when the block raises."""
        validate_key(key)
        headers = {"Content-Type": content_type or "application/octet-stream"}
        headers.update({_META_PREFIX + k.lower(): v for k, v in (metadata or {}).items()})
        writer = _MultipartWriter(self, key, headers)
        try:
            yield writer
            writer.commit()
        except BaseException:
            writer.abort()
            raise

    def iter_keys(self, prefix: str) -> Iterator[str]:
        """Keys under ``prefix``, listed page by page."""
        for obj in self.client.list_objects(self.bucket, prefix=prefix, recursive=True):
            if obj.object_name is not None and not obj.is_dir:
                yield obj.object_name

    def delete_prefix(self, prefix: str) -> int:
        """Delete every object under ``prefix`` with multi-object deletes.

        Raises:
            InvalidKey: an empty prefix (it would empty the bucket).
            StorageUnavailable: the store refused to delete an object.
        """
        if not prefix:
            raise InvalidKey("refusing to delete with an empty prefix", field="prefix")
        keys = list(self.iter_keys(prefix))
        errors = list(self.client.remove_objects(self.bucket, (DeleteObject(k) for k in keys)))
        if errors:
            first = errors[0]
            raise StorageUnavailable(
                f"{len(errors)} of {len(keys)} objects under {prefix!r} were not deleted; "
                f"first {first.name!r}: {first.code}: {first.message}"
            )
        return len(keys)
