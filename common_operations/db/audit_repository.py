"""The append-only ``admin_audit_log``: privileged actions, who took them, before and after.

Rows are only ever inserted (the table's triggers refuse UPDATE, DELETE and TRUNCATE). A change that
has its own transaction (settings, messages, API keys) writes its audit row in it through
:func:`record` with the transaction's connection, so the change and its record commit together.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final, Protocol

import asyncpg

from common_operations.domain.principal import Principal
from common_operations.domain.task import Page

_INSERT = """
INSERT INTO admin_audit_log
  (actor, actor_roles, action, entity_type, entity_id, old_state, new_state, metadata)
VALUES ($1, $2::jsonb, $3, $4, $5, $6::jsonb, $7::jsonb, $8::jsonb)
"""


_COLUMNS = (
    "id, actor, actor_roles, action, entity_type, entity_id, old_state, new_state, metadata, created_at"
)
_FROM = "FROM admin_audit_log"
# Totals are exact up to this many matching rows, the planner's estimate beyond (the log only grows).
EXACT_TOTAL_LIMIT: Final = 10_000


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


@dataclass(frozen=True, slots=True)
class AuditQuery:
    """Filters and paging of the audit log (validated by the service).

    Attributes:
        actor: only entries of this principal (index ``(actor, id DESC)``).
        action: only this action.
        entity_type: only entries about entities of this type (index ``(entity_type, entity_id, id DESC)``).
        entity_id: only entries about this entity (needs ``entity_type``).
        before: only entries with a smaller id (a cursor: the last id of the previous page).
        page: 1-based page number.
        page_size: entries per page.
    """

    actor: str | None = None
    action: str | None = None
    entity_type: str | None = None
    entity_id: str | None = None
    before: int | None = None
    page: int = 1
    page_size: int = 50

    @property
    def offset(self) -> int:
        """Entries skipped before this page."""
        return (self.page - 1) * self.page_size


@dataclass(frozen=True, slots=True)
class AuditRecord:
    """One stored entry of the audit log."""

    id: int
    actor: str
    actor_roles: list[str]
    action: str
    entity_type: str
    entity_id: str
    old_state: Any
    new_state: Any
    metadata: dict[str, Any]
    created_at: datetime


def _decoded(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str) else value


def _audit_record(row: asyncpg.Record) -> AuditRecord:
    roles = _decoded(row["actor_roles"]) or []
    metadata = _decoded(row["metadata"]) or {}
    return AuditRecord(
        id=int(row["id"]),
        actor=row["actor"],
        actor_roles=[str(r) for r in roles] if isinstance(roles, list) else [],
        action=row["action"],
        entity_type=row["entity_type"],
        entity_id=row["entity_id"],
        old_state=_decoded(row["old_state"]),
        new_state=_decoded(row["new_state"]),
        metadata=metadata if isinstance(metadata, dict) else {"value": metadata},
        created_at=row["created_at"],
    )


class AuditLog:
    """Writes (and, for the admin endpoint, reads) the audit log on a pool.

    There is no method that changes or removes an entry, and the table's triggers refuse it anyway.
    """

    def __init__(self, pool: asyncpg.Pool) -> None:
        """Use ``pool`` for entries that are not part of another transaction."""
        self._pool = pool

    async def record(self, actor: Principal, entry: AuditEntry) -> None:
        """Append ``entry`` in a transaction of its own."""
        await record(self._pool, actor, entry)

    async def page(self, query: AuditQuery) -> Page[AuditRecord]:
        """A page of entries matching ``query``, newest first, and how many match in all."""
        clauses: list[str] = []
        args: list[Any] = []

        def add(sql: str, value: Any) -> None:
            args.append(value)
            clauses.append(sql.format(f"${len(args)}"))

        if query.actor is not None:
            add("actor = {}", query.actor)
        if query.entity_type is not None:
            add("entity_type = {}", query.entity_type)
        if query.entity_id is not None:
            add("entity_id = {}", query.entity_id)
        if query.action is not None:
            add("action = {}", query.action)
        if query.before is not None:
            add("id < {}", query.before)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        n = len(args)
        rows, total = await asyncio.gather(
            self._pool.fetch(
                f"SELECT {_COLUMNS} {_FROM} {where} ORDER BY id DESC LIMIT ${n + 1} OFFSET ${n + 2}",
                *args,
                query.page_size,
                query.offset,
            ),
            self._count(where, args),
        )
        return Page([_audit_record(r) for r in rows], total, query.page, query.page_size)

    async def _count(self, where: str, args: list[Any]) -> int:
        exact = await self._pool.fetchval(
            f"SELECT count(*) FROM (SELECT 1 {_FROM} {where} LIMIT {EXACT_TOTAL_LIMIT + 1}) AS m",
            *args,
        )
        if exact <= EXACT_TOTAL_LIMIT:
            return int(exact)
        plan = await self._pool.fetchval(f"EXPLAIN (FORMAT JSON) SELECT 1 {_FROM} {where}", *args)
        return max(int(json.loads(plan)[0]["Plan"]["Plan Rows"]), int(exact))
