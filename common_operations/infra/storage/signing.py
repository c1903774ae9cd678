"""HMAC-SHA256 signed, expiring URLs of the local storage backend.

A URL grants one operation (``get`` or ``put``) on one key until an instant. Its query carries the
expiry, the grant's terms (the largest accepted upload and its content type; the download name) and
a signature over all of them plus the operation and the key, so none of them can be changed, added or
dropped without the signature failing.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from common_operations.domain.errors import PermissionDenied

Operation = Literal["get", "put"]

EXPIRES = "expires"
SIGNATURE = "signature"
# Grant terms, in the query under these names.
MAX_SIZE = "max"
CONTENT_TYPE = "type"
DOWNLOAD_NAME = "name"
_RESERVED = frozenset({EXPIRES, SIGNATURE})
MIN_SECRET_BYTES = 16


class InvalidSignature(PermissionDenied):
    """The URL was not signed by this service, or was changed after signing."""

    code = "INVALID_SIGNATURE"


class UrlExpired(PermissionDenied):
    """The URL's grant has expired."""

    code = "URL_EXPIRED"


@dataclass(frozen=True, slots=True)
class SignedGrant:
    """What a verified URL allows."""

    op: Operation
    key: str
    expires_at: int  # unix seconds
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def max_size(self) -> int | None:
        """The largest upload a ``put`` grant accepts, in bytes."""
        value = self.extra.get(MAX_SIZE)
        return int(value) if value is not None else None

    @property
    def content_type(self) -> str | None:
        """The content type the grant names, if any."""
        return self.extra.get(CONTENT_TYPE)

    @property
    def download_name(self) -> str | None:
        """The file name a ``get`` grant downloads under, if any."""
        return self.extra.get(DOWNLOAD_NAME)


class UrlSigner:
    """Signs and verifies grants with one secret."""

    def __init__(self, secret: bytes) -> None:
        """Args: secret: the HMAC key (at least 16 bytes)."""
        if len(secret) < MIN_SECRET_BYTES:
            raise ValueError(f"the signing secret must have at least {MIN_SECRET_BYTES} bytes")
        self._secret = secret

    def _signature(self, op: str, key: str, expires: str, extra: Mapping[str, str]) -> str:
        # JSON of a list is an unambiguous encoding: no separator inside a value can shift a field.
        message = json.dumps([op, key, expires, sorted(extra.items())], separators=(",", ":"))
        digest = hmac.new(self._secret, message.encode("utf-8"), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")

    def sign(self, op: Operation, key: str, expires_at_unix: int, extra: Mapping[str, str]) -> dict[str, str]:
        """The query parameters of a URL granting ``op`` on ``key`` until ``expires_at_unix``.

        Args:
            op: ``get`` or ``put``.
            key: the object key.
            expires_at_unix: the end of the grant, unix seconds.
            extra: the grant's terms (``max``, ``type``, ``name``); all are signed.
        """
        if reserved := _RESERVED & extra.keys():
            raise ValueError(f"grant terms may not be named {sorted(reserved)}")
        expires = str(int(expires_at_unix))
        params = dict(extra)
        params[EXPIRES] = expires
        params[SIGNATURE] = self._signature(op, key, expires, extra)
        return params

    def verify(
        self, op: Operation, key: str, query: Mapping[str, str], *, now: float | None = None
    ) -> SignedGrant:
        """The grant of a URL's query, once its signature and expiry are checked.

        Args:
            op: the operation the request performs.
            key: the key the request names.
            query: the URL's query parameters (single values).
            now: the current unix time (tests pass it; defaults to the clock).

        Raises:
            InvalidSignature: a parameter is missing or malformed, or the signature does not match
                (another key, another operation, a changed term).
            UrlExpired: the signature matches but the grant has expired.
        """
        expires = query.get(EXPIRES)
        signature = query.get(SIGNATURE)
        if not expires or not signature or not expires.isdigit():
            raise InvalidSignature("the URL is not signed (expires and signature are required)")
        extra = {k: v for k, v in query.items() if k not in _RESERVED}
        expected = self._signature(op, key, expires, extra)
        if not hmac.compare_digest(expected.encode("ascii"), signature.encode("utf-8", "replace")):
            raise InvalidSignature("the URL's signature does not match its operation, key and terms")
        expires_at = int(expires)
        if (time.time() if now is None else now) >= expires_at:
            raise UrlExpired("the URL has expired; ask for a new one", expired_at=expires_at)
        if MAX_SIZE in extra and not extra[MAX_SIZE].isdigit():
            # Only this service signs, so this is a bug here rather than a client's fault.
            raise InvalidSignature("the URL's size limit is malformed")
        return SignedGrant(op=op, key=key, expires_at=expires_at, extra=extra)
