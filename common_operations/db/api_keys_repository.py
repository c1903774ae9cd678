"""The ``api_keys`` table: lookups by prefix for authentication, audited creates and revokes.

A create or a revoke writes its ``admin_audit_log`` row in the same transaction as the change, so
a key never exists (or stops working) without its record. Only the SHA-256 of a key is stored.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from common_operations.db.audit_repository import AuditEntry, record
from common_operations.domain.principal import Principal

_COLUMNS = (
    "id, prefix, key_hash, principal, roles, description, created_by, created_at, expires_at,"
    " revoked_at, revoked_by, last_used_at"
)
_BY_PREFIX = f"SELECT {_COLUMNS} FROM api_keys WHERE prefix = $1"
_BY_ID = f"SELECT {_COLUMNS} FROM api_keys WHERE id = $1"
_BY_ID_FOR_UPDATE = f"SELECT {_COLUMNS} FROM api_keys WHERE id = $1 FOR UPDATE"
_INSERT = f"""
INSERT INTO api_keys (id, prefix, key_hash, principal, roles, description, created_by, expires_at)
VALUES ($1, $2, $3, $4, $5::jsonb, $6, $7, $8)
RETURNING {_COLUMNS}
"""
_REVOKE = f"""
UPDATE api_keys SET revoked_at = now(), revoked_by = $2 WHERE id = $1
RETURNING {_COLUMNS}
"""
# Written at most once per interval per key, whichever replica saw the key used.
_TOUCH = """
UPDATE api_keys SET last_used_at = now()
WHERE id = $1 AND (last_used_at IS NULL OR last_used_at < now() - make_interval(secs => $2))
"""
_PAGE = f"""
SELECT {_COLUMNS}, count(*) OVER () AS total FROM api_keys
WHERE $1 OR revoked_at IS NULL
ORDER BY created_at DESC, id DESC
LIMIT $2 OFFSET $3
"""
_COUNT = "SELECT count(*) FROM api_keys WHERE $1 OR revoked_at IS NULL"


@dataclass(frozen=True, slots=True)
class ApiKeyRecord:
    """A stored API key: everything but the key itself (``key_hash`` never leaves the service)."""

    id: uuid.UUID
    prefix: str
    key_hash: str
    principal: str
    roles: tuple[str, ...]
    description: str
    created_by: str
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None
    revoked_by: str | None
    last_used_at: datetime | None

    def public(self) -> dict[str, Any]:
        """The key as shown to admins and kept in the audit log: no hash, no secret."""
        return {
            "id": str(self.id),
            "prefix": self.prefix,
            "principal": self.principal,
            "roles": list(self.roles),
            "description": self.description,
            "createdBy": self.created_by,
            "createdAt": self.created_at.isoformat(),
            "expiresAt": self.expires_at.isoformat() if self.expires_at else None,
            "revokedAt": self.revoked_at.isoformat() if self.revoked_at else None,
            "revokedBy": self.revoked_by,
        }


def _record(row: asyncpg.Record) -> ApiKeyRecord:
    roles = row["roles"]
    if isinstance(roles, str):  # asyncpg hands JSONB over as text unless a codec is set
        roles = json.loads(roles)
    return ApiKeyRecord(
        id=row["id"],
        prefix=row["prefix"],
        key_hash=row["key_hash"],
        principal=row["principal"],
        roles=tuple(str(r) for r in roles or ()),
        description=row["description"],
        created_by=row["created_by"],
        created_at=row["created_at"],
        expires_at=row["expires_at"],
        revoked_at=row["revoked_at"],
        revoked_by=row["revoked_by"],
        last_used_at=row["last_used_at"],
    )


@dataclass(frozen=True, slots=True)
class NewApiKey:
    """What a create stores (the hash of the key, never the key)."""

    id: uuid.UUID
    prefix: str
    key_hash: str
    principal: str
    roles: tuple[str, ...]
    description: str
    expires_at: datetime | None


class ApiKeysRepository:
    """Reads and audited changes of ``api_keys``."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        """Use the engine's started asyncpg pool."""
        self._pool = pool

    async def find_by_prefix(self, prefix: str) -> ApiKeyRecord | None:
        """The key with that public prefix, revoked or expired ones included."""
        row = await self._pool.fetchrow(_BY_PREFIX, prefix)
        return _record(row) if row is not None else None

    async def get(self, key_id: uuid.UUID) -> ApiKeyRecord | None:
        """The key with that id."""
        row = await self._pool.fetchrow(_BY_ID, key_id)
        return _record(row) if row is not None else None

    async def touch(self, key_id: uuid.UUID, min_interval: float) -> None:
        """Record a use of the key, unless one was recorded less than ``min_interval`` seconds ago."""
        await self._pool.execute(_TOUCH, key_id, float(min_interval))

    async def create(self, key: NewApiKey, actor: Principal) -> ApiKeyRecord:
        """Store ``key`` and its ``api_key.create`` audit row in one transaction."""
        async with self._pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(
                _INSERT,
                key.id,
                key.prefix,
                key.key_hash,
                key.principal,
                json.dumps(list(key.roles)),
                key.description,
                actor.subject[:255],
                key.expires_at,
            )
            assert row is not None
            created = _record(row)
            await record(
                conn,
                actor,
                AuditEntry("api_key.create", "api_key", str(created.id), new_state=created.public()),
            )
            return created

    async def revoke(self, key_id: uuid.UUID, actor: Principal) -> tuple[ApiKeyRecord, bool] | None:
        """Revoke the key (and audit it) unless it already is; None when there is no such key.

        Returns:
            The key as it is now, and whether this call revoked it (False: it was revoked before,
            nothing was changed or recorded).
        """
        async with self._pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(_BY_ID_FOR_UPDATE, key_id)
            if row is None:
                return None
            before = _record(row)
            if before.revoked_at is not None:
                return before, False
            updated = await conn.fetchrow(_REVOKE, key_id, actor.subject[:255])
            assert updated is not None
            after = _record(updated)
            await record(
                conn,
                actor,
                AuditEntry(
                    "api_key.revoke",
                    "api_key",
                    str(after.id),
                    old_state=before.public(),
                    new_state=after.public(),
                    metadata={"principal": after.principal},
                ),
            )
            return after, True

    async def page(self, *, include_revoked: bool, limit: int, offset: int) -> tuple[list[ApiKeyRecord], int]:
        """Keys newest first, and how many match in all."""
        rows = await self._pool.fetch(_PAGE, include_revoked, limit, offset)
        if rows:
            return [_record(r) for r in rows], int(rows[0]["total"])
        # An offset past the end still reports the total.
        total = await self._pool.fetchval(_COUNT, include_revoked)
        return [], int(total or 0)
