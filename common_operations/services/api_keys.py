"""API keys of services that hold no user token: create (shown once), list, revoke. Admin only.

A key reads ``co_<prefix>_<secret>``: the prefix (12 hex characters) is public and finds the row,
the secret is 256 random bits. Only the SHA-256 of the whole key is stored; a slow password hash
would add nothing against guessing 256 random bits and would cost every request.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import unicodedata
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

from common_operations.db.api_keys_repository import ApiKeyRecord, ApiKeysRepository, NewApiKey
from common_operations.domain.errors import DomainError, ErrorKind, ValidationFailed, quoted
from common_operations.domain.principal import Principal, require_admin

KEY_SCHEME = "co"
PREFIX_HEX_CHARS = 12
SECRET_BYTES = 32
MAX_PRINCIPAL_LENGTH = 255
MAX_DESCRIPTION_LENGTH = 1000
MAX_ROLES = 20
ROLE_PATTERN = re.compile(r"^[a-z0-9_.-]{1,64}$")
DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000
MAX_PAGE = 1_000_000
# ``co_`` + 12 hex + ``_`` + 43 urlsafe characters; a longer value is not one of ours.
MAX_KEY_LENGTH = 128
_KEY = re.compile(
    rf"^{KEY_SCHEME}_(?P<prefix>[0-9a-f]{{{PREFIX_HEX_CHARS}}})_(?P<secret>[A-Za-z0-9_-]{{16,}})$"
)


class ApiKeyNotFound(DomainError):
    """No API key has the given id or prefix."""

    code = "API_KEY_NOT_FOUND"
    kind = ErrorKind.NOT_FOUND


@dataclass(frozen=True, slots=True)
class CreatedApiKey:
    """A new key: its record and the key itself, which is shown this once and never again."""

    record: ApiKeyRecord
    key: str


@dataclass(frozen=True, slots=True)
class ApiKeyPage:
    """A page of keys (newest first) and how many match in all."""

    keys: list[ApiKeyRecord]
    total: int
    page: int
    page_size: int


def hash_key(key: str) -> str:
    """The stored form of a key: SHA-256 of its UTF-8 text, hex."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def parse_key(key: str) -> str | None:
    """The prefix of a well-formed key, or None."""
    if len(key) > MAX_KEY_LENGTH:
        return None
    match = _KEY.match(key)
    return match.group("prefix") if match else None


def new_key() -> tuple[str, str]:
    """A fresh ``(prefix, key)``."""
    prefix = secrets.token_hex(PREFIX_HEX_CHARS // 2)
    return prefix, f"{KEY_SCHEME}_{prefix}_{secrets.token_urlsafe(SECRET_BYTES)}"


def _has_control_characters(text: str) -> bool:
    return any(unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp") for ch in text)


def validate_principal(name: str) -> str:
    """A key's principal name: 1 to 255 characters, no control characters, not blank.

    Raises:
        ValidationFailed: naming the field ``principal``.
    """
    if not name.strip() or len(name) > MAX_PRINCIPAL_LENGTH or _has_control_characters(name):
        raise ValidationFailed(
            f"principal must be 1 to {MAX_PRINCIPAL_LENGTH} characters without control characters",
            field="principal",
        )
    if name != name.strip():
        raise ValidationFailed("principal must not start or end with white space", field="principal")
    return name


def validate_roles(roles: list[str]) -> tuple[str, ...]:
    """Roles of a key: each ``[a-z0-9_.-]{1,64}`` (admin, operator, service, viewer or any other).

    Duplicates are dropped; the order is kept.

    Raises:
        ValidationFailed: naming the field ``roles``.
    """
    if len(roles) > MAX_ROLES:
        raise ValidationFailed(f"at most {MAX_ROLES} roles", field="roles")
    for role in roles:
        if not ROLE_PATTERN.match(role):
            raise ValidationFailed(
                f"role {quoted(role)} must match [a-z0-9_.-]{{1,64}} (e.g. service, operator)", field="roles"
            )
    return tuple(dict.fromkeys(roles))


def validate_expiry(expires_at: datetime | None, now: datetime) -> datetime | None:
    """An expiry in the future, with a time zone.

    Raises:
        ValidationFailed: naming the field ``expiresAt``.
    """
    if expires_at is None:
        return None
    if expires_at.tzinfo is None:
        raise ValidationFailed("expiresAt needs a time zone (e.g. 2027-01-01T00:00:00Z)", field="expiresAt")
    if expires_at <= now:
        raise ValidationFailed("expiresAt must be in the future", field="expiresAt")
    return expires_at


class ApiKeysService:
    """Admin use cases of API keys; every change is audited in its own transaction."""

    def __init__(self, repository: ApiKeysRepository) -> None:
        """Keep keys in ``repository``."""
        self._repository = repository

    async def create(
        self,
        actor: Principal,
        principal: str,
        roles: list[str],
        *,
        description: str = "",
        expires_at: datetime | None = None,
    ) -> CreatedApiKey:
        """A new key for ``principal`` with ``roles``; the answer holds the key, shown only now.

        Raises:
            PermissionDenied: the actor is not an admin.
            ValidationFailed: a field is out of range (the error names it).
        """
        require_admin(actor, "managing API keys")
        name = validate_principal(principal)
        checked_roles = validate_roles(roles)
        if len(description) > MAX_DESCRIPTION_LENGTH or "\x00" in description:
            raise ValidationFailed(
                f"description: at most {MAX_DESCRIPTION_LENGTH} characters, no NUL", field="description"
            )
        expiry = validate_expiry(expires_at, datetime.now(UTC))
        prefix, key = new_key()
        record = await self._repository.create(
            NewApiKey(
                id=uuid.uuid4(),
                prefix=prefix,
                key_hash=hash_key(key),
                principal=name,
                roles=checked_roles,
                description=description,
                expires_at=expiry,
            ),
            actor,
        )
        return CreatedApiKey(record=record, key=key)

    async def list_keys(
        self,
        actor: Principal,
        *,
        include_revoked: bool = False,
        page: int = 1,
        page_size: int = DEFAULT_PAGE_SIZE,
    ) -> ApiKeyPage:
        """Keys newest first (revoked ones only with ``include_revoked``); never a key or its hash.

        Raises:
            PermissionDenied: the actor is not an admin.
            ValidationFailed: ``page`` or ``pageSize`` out of range.
        """
        require_admin(actor, "managing API keys")
        if not 1 <= page <= MAX_PAGE:
            raise ValidationFailed(f"page must be 1 to {MAX_PAGE}", field="page")
        if page_size < 1:
            raise ValidationFailed("pageSize must be at least 1", field="pageSize")
        page_size = min(page_size, MAX_PAGE_SIZE)
        keys, total = await self._repository.page(
            include_revoked=include_revoked, limit=page_size, offset=(page - 1) * page_size
        )
        return ApiKeyPage(keys=keys, total=total, page=page, page_size=page_size)

    async def revoke(self, actor: Principal, id_or_prefix: str) -> ApiKeyRecord:
        """Revoke a key by its id or its prefix; it stops working at once, on every replica.

        Revoking a revoked key changes nothing (and is not audited again): the key is answered as
        it is, so a retried revoke succeeds.

        Raises:
            PermissionDenied: the actor is not an admin.
            ApiKeyNotFound: no key has that id or prefix.
        """
        require_admin(actor, "managing API keys")
        key = await self._resolve(id_or_prefix)
        revoked = await self._repository.revoke(key.id, actor)
        if revoked is None:  # deleted between the two reads; keys are never deleted, but be exact
            raise ApiKeyNotFound(f"no API key {quoted(id_or_prefix)}")
        return revoked[0]

    async def _resolve(self, id_or_prefix: str) -> ApiKeyRecord:
        text = id_or_prefix.strip()
        found: ApiKeyRecord | None = None
        try:
            found = await self._repository.get(uuid.UUID(text))
        except ValueError:
            # A whole key pasted by mistake names its prefix too; the secret part is not looked at.
            prefix = parse_key(text) or text.lower()
            if re.fullmatch(rf"[0-9a-f]{{{PREFIX_HEX_CHARS}}}", prefix):
                found = await self._repository.find_by_prefix(prefix)
        if found is None:
            raise ApiKeyNotFound(f"no API key has the id or prefix {quoted(id_or_prefix[:40])}")
        return found
