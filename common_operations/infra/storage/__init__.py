"""Object storage of task files: one :class:`Storage` interface, a local and an S3 backend."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from common_operations.config import Settings
from common_operations.domain.errors import PayloadTooLarge
from common_operations.infra.storage.base import ObjectInfo, ObjectNotFound, ObjectWriter, SignedUrl, Storage
from common_operations.infra.storage.local import LocalStorage
from common_operations.infra.storage.s3 import S3Storage

__all__ = [
    "LocalStorage",
    "ObjectInfo",
    "ObjectNotFound",
    "ObjectWriter",
    "S3Storage",
    "SignedUrl",
    "Storage",
    "build_storage",
    "check_uploaded_size",
    "signing_secret",
]

SECRET_FILE = "storage.key"
SECRET_BYTES = 32


def signing_secret(data_dir: Path) -> bytes:
    """The local backend's URL signing key, generated once into ``<data_dir>/storage.key`` (0600).

    Kept across restarts so URLs handed out before a restart stay valid.
    """
    path = data_dir / SECRET_FILE
    try:
        secret = path.read_bytes()
    except FileNotFoundError:
        data_dir.mkdir(parents=True, exist_ok=True)
        secret = secrets.token_bytes(SECRET_BYTES)
        try:
            # O_EXCL: when two processes start at once, one key wins and both read it back.
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            return path.read_bytes()
        with os.fdopen(fd, "wb") as file:
            file.write(secret)
        return secret
    if len(secret) < SECRET_BYTES // 2:
        raise ValueError(f"{path} holds a signing key too short to use; delete it to generate a new one")
    return secret


def build_storage(settings: Settings) -> Storage:
    """The backend ``settings.storage.backend`` names, configured (not yet checked: ``ensure_ready``).

    Args:
        settings: the service's settings (``storage``, ``data_dir`` and ``http.port`` are read).
    """
    config = settings.storage
    if config.backend == "s3":
        return S3Storage(config.s3)
    root = config.local_root or settings.data_dir / "storage"
    base_url = config.public_base_url or f"http://127.0.0.1:{settings.http.port}"
    if config.signing_secret:
        secret = config.signing_secret.encode("utf-8")
    else:
        secret = signing_secret(settings.data_dir)
    return LocalStorage(root, base_url, secret)


def check_uploaded_size(storage: Storage, key: str, max_size: int) -> ObjectInfo:
    """The uploaded object, once it is known to be within ``max_size``; a larger one is deleted.

    An S3 presigned PUT cannot limit the size of what it accepts, so a client may upload more than
    it was granted; call this before using an upload. (The local backend refuses an oversize body
    while it streams, so there this only confirms the upload.)

    Raises:
        ObjectNotFound: nothing was uploaded under ``key``.
        PayloadTooLarge: the object was larger than ``max_size`` (it has been deleted).
    """
    info = storage.stat(key)
    if info is None:
        raise ObjectNotFound(f"nothing has been uploaded under {key!r}", key=key)
    if info.size > max_size:
        # Keys of this service are a fixed-length uuid (plus extension) long, so no other key
        # starts with a whole key: deleting the prefix deletes this one object.
        storage.delete_prefix(key)
        raise PayloadTooLarge(
            f"the upload has {info.size} bytes; at most {max_size} are accepted",
            size=info.size,
            max_size=max_size,
        )
    return info
