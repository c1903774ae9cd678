"""Settings groups in Postgres: one ``settings`` row per group, changed with its audit row and event.

A change runs in one transaction on one connection: the group's row is locked (created at version 0
first if the group was never written), the caller's decision is taken on the locked row, then the
row, a ``settings_audit`` row, the ``admin_audit_log`` row and the ``settings.changed`` outbox event
are written together. Two concurrent changes of a group therefore serialise, and a conditional one
sees the version the other committed.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from common_operations.db import outbox
from common_operations.db.audit_repository import AuditEntry, record
from common_operations.domain.principal import Principal

_READ = "SELECT value, version, updated_by, updated_at FROM settings WHERE key = $1"
_ENSURE = """
INSERT INTO settings (key, value, is_public, version, updated_by, updated_at)
VALUES ($1, '{}'::jsonb, $2, 0, '', now())
ON CONFLICT (key) DO NOTHING
"""
_LOCK = "SELECT value, version, updated_by, updated_at FROM settings WHERE key = $1 FOR UPDATE"
_UPDATE = """
UPDATE settings SET value = $2::jsonb, version = $3, updated_by = $4, updated_at = now()
WHERE key = $1
RETURNING updated_at
"""
_AUDIT = """
INSERT INTO settings_audit (key, old_value, new_value, changed_by, changed_at, version)
VALUES ($1, $2::jsonb, $3::jsonb, $4, $5, $6)
"""


@dataclass(frozen=True, slots=True)
class StoredGroup:
    """A group's row: the values set explicitly (defaults are the schema's) and its version.

    Version 0 means the group was never changed.
    """

    values: dict[str, Any]
    version: int
    updated_by: str = ""
    updated_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class GroupChange:
    """What a change writes, decided by the service on the locked row.

    Attributes:
        values: the new explicitly set values (the row's ``value``).
        audit_old: the audit row's ``old_value``.
        audit_new: the audit row's ``new_value``.
        event: the ``settings.changed`` event's ``data`` without ``version`` and ``changedAt``
            (added here, once they are known).
        admin_audit: the ``admin_audit_log`` entry (secrets masked), written when the change is
            made by a principal (``change(actor=…)``); its metadata gets the new ``version``.
    """

    values: dict[str, Any]
    audit_old: dict[str, Any]
    audit_new: dict[str, Any]
    event: dict[str, Any]
    admin_audit: AuditEntry | None = None


# Decides on the locked row; None: nothing to change. Raising rolls the transaction back.
Decide = Callable[[StoredGroup], GroupChange | None]


class SettingsRepository:
    """Reads and audited changes of the ``settings`` table."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        """Use the engine's started asyncpg pool."""
        self._pool = pool

    async def read(self, group: str) -> StoredGroup:
        """The group's row, or an empty version-0 group if it was never written."""
        row = await self._pool.fetchrow(_READ, group)
        return _stored(row) if row is not None else StoredGroup(values={}, version=0)

    async def change(
        self,
        group: str,
        *,
        changed_by: str,
        is_public: bool,
        decide: Decide,
        actor: Principal | None = None,
    ) -> tuple[StoredGroup, bool]:
        """Apply ``decide``'s change to the locked row, with its audit rows and outbox event.

        Args:
            group: the group (the row's key).
            changed_by: who changes it (audit row and ``updated_by``).
            is_public: the row's ``is_public`` when it is created (the group has public keys).
            decide: called once with the locked row; raises to refuse, returns None for no change.
            actor: the principal making the change; with the decision's ``admin_audit`` entry, an
                ``admin_audit_log`` row is written in the same transaction.

        Returns:
            The row after the call, and whether it changed.
        """
        async with self._pool.acquire() as connection, connection.transaction():
            await connection.execute(_ENSURE, group, is_public)
            current = _stored(await connection.fetchrow(_LOCK, group))
            decision = decide(current)
            if decision is None:
                return current, False
            version = current.version + 1
            changed_at: datetime = await connection.fetchval(
                _UPDATE, group, json.dumps(decision.values), version, changed_by
            )
            await connection.execute(
                _AUDIT,
                group,
                json.dumps(decision.audit_old),
                json.dumps(decision.audit_new),
                changed_by,
                changed_at,
                version,
            )
            if actor is not None and decision.admin_audit is not None:
                entry = decision.admin_audit
                await record(
                    connection,
                    actor,
                    AuditEntry(
                        entry.action,
                        entry.entity_type,
                        entry.entity_id,
                        entry.old_state,
                        entry.new_state,
                        {**entry.metadata, "version": version},
                    ),
                )
            await outbox.enqueue(
                connection,
                stream=f"settings:{group}",
                topic_kind="settings_changed",
                event_id=f"settings:{group}:v{version}",
                event_type="settings.changed",
                subject=group,
                data={**decision.event, "version": version, "changedAt": changed_at.isoformat()},
            )
        return StoredGroup(decision.values, version, changed_by, changed_at), True


def _stored(row: asyncpg.Record) -> StoredGroup:
    value = row["value"]
    values = json.loads(value) if isinstance(value, str) else dict(value or {})
    return StoredGroup(
        values=values if isinstance(values, dict) else {},
        version=int(row["version"]),
        updated_by=row["updated_by"] or "",
        updated_at=row["updated_at"],
    )
