"""Objects as files under one directory, up- and downloaded through the REST API's signed URLs.

A key maps to the file of the same relative path under the root. Content type and metadata live in
a side file ``<file>~meta``; ``~`` never occurs in a key, so neither side files nor the temporary
files of writes in progress can be mistaken for objects.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
import uuid
from collections.abc import AsyncIterable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import BinaryIO
from urllib.parse import quote, urlencode

import anyio
import anyio.to_thread

from common_operations.domain.errors import PayloadTooLarge, ValidationFailed
from common_operations.domain.files import InvalidKey, validate_key
from common_operations.infra.storage.base import ObjectInfo, ObjectNotFound, ObjectWriter, SignedUrl, Storage
from common_operations.infra.storage.signing import (
    CONTENT_TYPE,
    DOWNLOAD_NAME,
    MAX_SIZE,
    Operation,
    SignedGrant,
    UrlSigner,
)

FILES_PATH = "/api/v1/files"
META_SUFFIX = "~meta"
TMP_SUFFIX = "~tmp"
# Request bodies arrive in small ASGI chunks; they are written to disk in batches of this size so a
# thread hop is not paid per chunk, and memory stays bounded by it.
WRITE_BATCH_BYTES = 1024 * 1024


class EmptyBody(ValidationFailed):
    """An upload without a single byte."""

    code = "EMPTY_BODY"


class _FileWriter:
    """An :class:`ObjectWriter` into an open temporary file."""

    def __init__(self, file: BinaryIO) -> None:
        self._file = file
        self._written = 0

    def write(self, data: bytes, /) -> int:
        self._file.write(data)
        self._written += len(data)
        return len(data)

    @property
    def bytes_written(self) -> int:
        return self._written


class LocalStorage:
    """:class:`Storage` on a local directory, with HMAC-signed URLs served by the REST API."""

    name = "local"

    def __init__(self, root: Path, public_base_url: str, secret: bytes) -> None:
        """Store under ``root``; URLs start with ``public_base_url`` and are signed with ``secret``."""
        self.root = root.resolve()
        self.public_base_url = public_base_url.rstrip("/")
        self.signer = UrlSigner(secret)

    def path_of(self, key: str) -> Path:
        """The file of ``key``.

        Raises:
            InvalidKey: the key is malformed or would leave the root (a symlink inside it, say).
        """
        path = self.root / validate_key(key)
        # validate_key already excludes "..": this guards against symlinks planted under the root.
        if not path.resolve().is_relative_to(self.root):
            raise InvalidKey("the key leaves the storage root", field="key")
        return path

    def ensure_ready(self) -> None:
        """Create the root directory; fail when it cannot be written."""
        self.root.mkdir(parents=True, exist_ok=True)
        if not os.access(self.root, os.W_OK | os.X_OK):
            raise PermissionError(f"the storage root {self.root} is not writable")

    def _url(self, op: Operation, key: str, expires: timedelta, extra: dict[str, str]) -> SignedUrl:
        validate_key(key)
        expires_at = int(time.time() + expires.total_seconds())
        params = self.signer.sign(op, key, expires_at, extra)
        url = f"{self.public_base_url}{FILES_PATH}/{quote(key)}?{urlencode(params)}"
        return SignedUrl(url=url, expires_at=datetime.fromtimestamp(expires_at, UTC))

    def presign_upload(
        self, key: str, *, expires: timedelta, max_size: int, content_type: str | None = None
    ) -> SignedUrl:
        """A URL of ``PUT /api/v1/files/{key}`` accepting up to ``max_size`` bytes."""
        extra = {MAX_SIZE: str(int(max_size))}
        if content_type:
            extra[CONTENT_TYPE] = content_type
        return self._url("put", key, expires, extra)

    def presign_download(
        self,
        key: str,
        *,
        expires: timedelta,
        download_name: str | None = None,
        content_type: str | None = None,
    ) -> SignedUrl:
        """A URL of ``GET /api/v1/files/{key}`` serving the file under ``download_name``."""
        extra: dict[str, str] = {}
        if download_name:
            extra[DOWNLOAD_NAME] = download_name
        if content_type:
            extra[CONTENT_TYPE] = content_type
        return self._url("get", key, expires, extra)

    def verify(self, op: Operation, key: str, query: dict[str, str]) -> SignedGrant:
        """The grant of a signed URL's query (see :meth:`UrlSigner.verify`)."""
        validate_key(key)
        return self.signer.verify(op, key, query)

    def stat(self, key: str) -> ObjectInfo | None:
        """The object, or None when its file does not exist."""
        path = self.path_of(key)
        try:
            size = path.stat().st_size
        except (FileNotFoundError, NotADirectoryError):
            return None
        if not path.is_file():
            return None
        meta: dict[str, object] = {}
        with contextlib.suppress(FileNotFoundError, ValueError):
            meta = json.loads(path.with_name(path.name + META_SUFFIX).read_text("utf-8"))
        content_type = meta.get("content_type")
        metadata = meta.get("metadata")
        return ObjectInfo(
            key=key,
            size=size,
            content_type=content_type if isinstance(content_type, str) else None,
            metadata={str(k): str(v) for k, v in metadata.items()} if isinstance(metadata, dict) else {},
        )

    @contextlib.contextmanager
    def open_read(self, key: str, offset: int = 0) -> Iterator[BinaryIO]:
        """The file, positioned at ``offset``.

        Raises:
            ObjectNotFound: no object has the key.
        """
        if offset < 0:
            raise ValueError("offset must not be negative")
        path = self.path_of(key)
        try:
            file = path.open("rb")
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            raise ObjectNotFound(f"no file has the key {key!r}", key=key) from None
        with file:
            file.seek(offset)
            yield file

    @contextlib.contextmanager
    def open_write(
        self, key: str, *, content_type: str, metadata: dict[str, str] | None = None
    ) -> Iterator[ObjectWriter]:
        """Write into a temporary file beside the target; renamed over it only on success."""
        path = self.path_of(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{uuid.uuid4().hex}{TMP_SUFFIX}")
        meta_tmp = tmp.with_name(tmp.name + META_SUFFIX)
        try:
            with tmp.open("xb") as file:
                yield _FileWriter(file)
                file.flush()
                os.fsync(file.fileno())
            meta = {"content_type": content_type, "metadata": dict(metadata or {})}
            meta_tmp.write_text(json.dumps(meta), "utf-8")
            # The side file first: a reader that sees the new data also sees its content type.
            os.replace(meta_tmp, path.with_name(path.name + META_SUFFIX))
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
            meta_tmp.unlink(missing_ok=True)

    def iter_keys(self, prefix: str) -> Iterator[str]:
        """Keys of the files under ``prefix`` (side and temporary files excluded)."""
        head, _, _ = prefix.rpartition("/")
        base = self.path_of(head) if head else self.root
        if not base.is_dir():
            return
        for dirpath, _dirs, files in os.walk(base):
            for name in files:
                if "~" in name:
                    continue
                key = Path(dirpath, name).relative_to(self.root).as_posix()
                if key.startswith(prefix):
                    yield key

    def delete_prefix(self, prefix: str) -> int:
        """Delete the files whose keys start with ``prefix``; a ``dir/`` prefix removes the tree.

        Raises:
            InvalidKey: an empty prefix (it would empty the whole storage) or a malformed one.
        """
        if not prefix:
            raise InvalidKey("refusing to delete with an empty prefix", field="prefix")
        keys = list(self.iter_keys(prefix))
        for key in keys:
            path = self.path_of(key)
            path.unlink(missing_ok=True)
            path.with_name(path.name + META_SUFFIX).unlink(missing_ok=True)
        if prefix.endswith("/"):
            tree = self.path_of(prefix.rstrip("/"))
            # Temporary files of writes still running go too; those writes fail when they finish.
            shutil.rmtree(tree, ignore_errors=True)
        return len(keys)


async def store_stream(
    storage: Storage,
    key: str,
    chunks: AsyncIterable[bytes],
    *,
    max_size: int,
    content_type: str,
    allow_empty: bool = True,
) -> int:
    """Write an async byte stream (a request body) into a new object, at most ``max_size`` bytes.

    Blocking writes run in a worker thread; memory stays bounded by :data:`WRITE_BATCH_BYTES`.
    Reading stops at the first byte beyond the limit, and nothing is stored then.

    Returns:
        The size of the stored object.

    Raises:
        PayloadTooLarge: the stream is longer than ``max_size``.
        EmptyBody: the stream is empty and ``allow_empty`` is false.
    """
    manager = storage.open_write(key, content_type=content_type)
    writer = await anyio.to_thread.run_sync(manager.__enter__)
    exc_info: tuple[type[BaseException], BaseException, TracebackType | None] | tuple[None, None, None]
    exc_info = (None, None, None)
    try:
        batch = bytearray()
        total = 0
        async for chunk in chunks:
            total += len(chunk)
            if total > max_size:
                raise PayloadTooLarge(
                    f"the upload is larger than the {max_size} bytes this URL accepts", max_size=max_size
                )
            batch += chunk
            if len(batch) >= WRITE_BATCH_BYTES:
                await anyio.to_thread.run_sync(writer.write, bytes(batch))
                batch.clear()
        if batch:
            await anyio.to_thread.run_sync(writer.write, bytes(batch))
        if total == 0 and not allow_empty:
            raise EmptyBody("the upload has no content")
    except BaseException as exc:
        exc_info = (type(exc), exc, exc.__traceback__)
        raise
    finally:
        # Shielded: a cancelled request must still remove its temporary file or abort its upload.
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(lambda: manager.__exit__(*exc_info))
    return total
