"""Writing an event that is not a task's into the outbox, inside the caller's transaction."""

from __future__ import annotations

import json
from typing import Any

import asyncpg

_ENQUEUE = """
INSERT INTO outbox_events (stream, topic_kind, event_id, event_type, subject, data)
VALUES ($1, $2, $3, $4, $5, $6::jsonb)
ON CONFLICT (event_id) DO NOTHING
"""


async def enqueue(
    connection: asyncpg.Connection,
    *,
    stream: str,
    topic_kind: str,
    event_id: str,
    event_type: str,
    subject: str,
    data: dict[str, Any],
) -> None:
    """Add an event to the outbox in the transaction ``connection`` is in.

    Args:
        connection: a connection inside the transaction that makes the change, so the event is
            recorded if and only if the change is.
        stream: events of one stream are relayed in order (``settings:payment``, ``messages``).
        topic_kind: a field name of ``EventTopics`` (``settings_changed``, ``messages_changed``).
        event_id: deterministic CloudEvents id (e.g. ``settings:payment:v7``): consumers
            deduplicate on it, and enqueueing the same id twice adds nothing.
        event_type: CloudEvents ``type`` (e.g. ``settings.changed``).
        subject: CloudEvents ``subject`` (e.g. ``payment``).
        data: the event's ``data``.
    """
    await connection.execute(_ENQUEUE, stream, topic_kind, event_id, event_type, subject, json.dumps(data))
