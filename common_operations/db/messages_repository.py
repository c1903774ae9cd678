"""The messages catalogue in Postgres; every change is written with its ``messages.changed`` event.

A change locks the key's row (if any), lets the service decide on it, and writes the row, the
outbox event and (when a principal makes it) the ``admin_audit_log`` row in one transaction. Event
ids carry the row's version and its creation instant, so a message deleted and created again
(versions start at 1 again) gets new ids rather than ids the outbox already holds.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

import asyncpg

from common_operations.db import outbox
from common_operations.db.audit_repository import AuditEntry, record
from common_operations.domain.messages import Message, MessagePage
from common_operations.domain.principal import Principal

_COLUMNS = (
    "key, category, default_language, translations, variables, escape_html, version, created_at, updated_at"
)
_GET = f"SELECT {_COLUMNS} FROM messages WHERE key = $1"
_GET_MANY = f"SELECT {_COLUMNS} FROM messages WHERE key = ANY($1::varchar[])"
_LOCK = f"SELECT {_COLUMNS} FROM messages WHERE key = $1 FOR UPDATE"
_PAGE = f"""
SELECT {_COLUMNS} FROM messages WHERE ($1::varchar IS NULL OR category = $1)
ORDER BY key LIMIT $2 OFFSET $3
"""
_COUNT = "SELECT count(*) FROM messages WHERE ($1::varchar IS NULL OR category = $1)"
_UPSERT = f"""
INSERT INTO messages ({_COLUMNS})
VALUES ($1, $2, $3, $4::jsonb, $5::jsonb, $6, 1, now(), now())
ON CONFLICT (key) DO UPDATE SET
  category = EXCLUDED.category, default_language = EXCLUDED.default_language,
  translations = EXCLUDED.translations, variables = EXCLUDED.variables,
  escape_html = EXCLUDED.escape_html, version = messages.version + 1, updated_at = now()
RETURNING {_COLUMNS}
"""
_DELETE = "DELETE FROM messages WHERE key = $1"
STREAM = "messages"

# Decides on the locked row (None: no such message): True to write, False for no change; raises to refuse.
Decide = Callable[[Message | None], bool]


class MessagesRepository:
    """Reads and changes of the ``messages`` table."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        """Use the engine's started asyncpg pool."""
        self._pool = pool

    async def get(self, key: str) -> Message | None:
        """The message with ``key``, if any."""
        row = await self._pool.fetchrow(_GET, key)
        return _message(row) if row is not None else None

    async def get_many(self, keys: Sequence[str]) -> dict[str, Message]:
        """The messages of ``keys`` that exist, by key."""
        rows = await self._pool.fetch(_GET_MANY, list(keys))
        return {row["key"]: _message(row) for row in rows}

    async def page(self, category: str | None, offset: int, limit: int) -> MessagePage:
        """Messages (of ``category``, or all) ordered by key, and their total."""
        async with self._pool.acquire() as connection:
            rows = await connection.fetch(_PAGE, category, limit, offset)
            total = await connection.fetchval(_COUNT, category)
        return MessagePage([_message(r) for r in rows], int(total))

    async def upsert(
        self, message: Message, *, changed_by: str, decide: Decide, actor: Principal | None = None
    ) -> tuple[Message, bool]:
        """Create or replace ``message`` with its ``messages.changed`` event.

        ``actor``: the principal making the change; a ``message.upsert`` audit row (the message
        before and after) is written with it.

        Returns:
            The stored message and whether it changed (False: ``decide`` found nothing to write).
        """
        async with self._pool.acquire() as connection, connection.transaction():
            current_row = await connection.fetchrow(_LOCK, message.key)
            current = _message(current_row) if current_row is not None else None
            if not decide(current):
                assert current is not None, "a missing message is always written"
                return current, False
            stored = _message(
                await connection.fetchrow(
                    _UPSERT,
                    message.key,
                    message.category,
                    message.default_language,
                    json.dumps(dict(message.translations)),
                    json.dumps(list(message.variables)),
                    message.escape_html,
                )
            )
            await _enqueue(connection, stored, "upsert", changed_by)
            if actor is not None:
                await record(
                    connection,
                    actor,
                    AuditEntry(
                        "message.upsert",
                        "message",
                        message.key,
                        old_state=message_document(current) if current is not None else None,
                        new_state=message_document(stored),
                        metadata={"version": stored.version, "created": current is None},
                    ),
                )
        return stored, True

    async def delete(
        self, key: str, *, changed_by: str, decide: Decide, actor: Principal | None = None
    ) -> Message | None:
        """Delete the message with its ``messages.changed`` event; the deleted message, if there was one.

        ``actor``: the principal deleting it; a ``message.delete`` audit row (the message before)
        is written with it.
        """
        async with self._pool.acquire() as connection, connection.transaction():
            row = await connection.fetchrow(_LOCK, key)
            current = _message(row) if row is not None else None
            if not decide(current) or current is None:
                return None
            await connection.execute(_DELETE, key)
            await _enqueue(connection, current, "delete", changed_by)
            if actor is not None:
                await record(
                    connection,
                    actor,
                    AuditEntry(
                        "message.delete",
                        "message",
                        key,
                        old_state=message_document(current),
                        metadata={"version": current.version},
                    ),
                )
        return current


async def _enqueue(connection: asyncpg.Connection, message: Message, action: str, changed_by: str) -> None:
    incarnation = int(message.created_at.timestamp() * 1_000_000) if message.created_at else 0
    suffix = ":deleted" if action == "delete" else ""
    await outbox.enqueue(
        connection,
        stream=STREAM,
        topic_kind="messages_changed",
        event_id=f"messages:{message.key}{suffix}:v{message.version}@{incarnation}",
        event_type="messages.changed",
        subject=message.key,
        data={
            "key": message.key,
            "category": message.category,
            "version": message.version,
            "action": action,
            "languages": sorted(message.translations),
            "changedBy": changed_by,
        },
    )


def _json(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str) else value


def _message(row: asyncpg.Record) -> Message:
    translations = _json(row["translations"]) or {}
    variables = _json(row["variables"]) or []
    return Message(
        key=row["key"],
        category=row["category"],
        default_language=row["default_language"],
        translations={str(k): str(v) for k, v in translations.items()},
        variables=tuple(str(v) for v in variables),
        escape_html=bool(row["escape_html"]),
        version=int(row["version"]),
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


def message_document(message: Message) -> dict[str, Any]:
    """A message as the JSON the cache keeps."""
    return {
        "key": message.key,
        "category": message.category,
        "defaultLanguage": message.default_language,
        "translations": dict(message.translations),
        "variables": list(message.variables),
        "escapeHtml": message.escape_html,
        "version": message.version,
        "createdAt": message.created_at.isoformat() if message.created_at else None,
        "updatedAt": message.updated_at.isoformat() if message.updated_at else None,
    }


def message_from_document(doc: dict[str, Any]) -> Message:
    """The message a cache document holds."""
    return Message(
        key=str(doc["key"]),
        category=str(doc["category"]),
        default_language=str(doc["defaultLanguage"]),
        translations={str(k): str(v) for k, v in dict(doc["translations"]).items()},
        variables=tuple(str(v) for v in doc["variables"]),
        escape_html=bool(doc["escapeHtml"]),
        version=int(doc["version"]),
        created_at=datetime.fromisoformat(doc["createdAt"]) if doc.get("createdAt") else None,
        updated_at=datetime.fromisoformat(doc["updatedAt"]) if doc.get("updatedAt") else None,
    )
