"""The append-only ``admin_audit_log``: privileged actions, who took them, before and after.

Rows are only ever inserted (the table's triggers refuse UPDATE, DELETE and TRUNCATE). A change that
has its own transaction (settings, messages, API keys) writes its audit row in it through
:func:`record` with the transaction's connection, so the change and its record commit together.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Protocol

import asyncpg

from common_operations.domain.principal import Principal

_INSERT = """
INSERT INTO admin_audit_log
  (actor, actor_roles, action, entity_type, entity_id, old_state, new_state, metadata)
VALUES ($1, $2::jsonb, $3, $4, $5, $6::jsonb, $7::jsonb, $8::jsonb)
"""


class Executor(Protocol):
    """A pool or a connection (inside the caller's transaction)."""

    async def execute(self, query: str, *args: Any) -> str: ...  # noqa: D102


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One privileged action.

    Attributes:
        action: what was done, dotted (``task.delete``, ``task.cancel``, ``api_key.create``, …).
        entity_type: ``task``, ``api_key``, ``settings``, ``message``.
        entity_id: the entity's id (a task id, a key id, a settings group, a message key).
        old_state: the entity before (None: it did not exist or is not recorded).
        new_state: the entity after (None: deleted).
        metadata: anything else worth keeping (the task's owner, a reason, a count).
    """

    action: str
    entity_type: str
    entity_id: str
    old_state: Any = None
    new_state: Any = None
    metadata: dict[str, Any] = field(default_factory=dict)


async def record(executor: Executor, actor: Principal, entry: AuditEntry) -> None:
    """Append ``entry`` taken by ``actor`` (in the executor's transaction, if it has one)."""
    await executor.execute(
        _INSERT,
        actor.subject[:255],
        json.dumps(sorted(actor.roles)),
        entry.action[:100],
        entry.entity_type[:100],
        entry.entity_id[:255],
        None if entry.old_state is None else json.dumps(entry.old_state, default=str),
        None if entry.new_state is None else json.dumps(entry.new_state, default=str),
        json.dumps({"via": actor.via, **entry.metadata}, default=str),
    )


class AuditLog:
    """Writes (and, for the admin endpoint, reads) the audit log on a pool."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        """Use ``pool`` for entries that are not part of another transaction."""
        self._pool = pool

    async def record(self, actor: Principal, entry: AuditEntry) -> None:
        """Append ``entry`` in a transaction of its own."""
        await record(self._pool, actor, entry)
