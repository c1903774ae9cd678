"""The SQL of the outbox relay: unrelayed events, per-stream leases, marking events relayed.

Two outboxes feed the relay. ``task_events`` rows (stream = the task id, in ``seq, id`` order) are
written with each task transition; ``outbox_events`` rows (stream = their ``stream`` column, in
``id`` order) by the settings and messages services. ``published_at IS NULL`` means not relayed
yet; partial indexes on exactly that keep every query here proportional to the backlog.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

# Streams with unrelayed events that no other relay holds, oldest backlog first. The lease row is
# only read here; taking it (``_TAKE_LEASE``) is what decides who publishes a stream.
_CANDIDATES = """
WITH s AS (
  SELECT task_id::text AS stream, min(id) AS first_id, min(created_at) AS oldest
  FROM task_events WHERE published_at IS NULL GROUP BY task_id
  UNION ALL
  SELECT stream, min(id), min(created_at) FROM outbox_events WHERE published_at IS NULL GROUP BY stream
)
SELECT s.stream FROM s
WHERE NOT EXISTS (
  SELECT 1 FROM outbox_leases l WHERE l.stream = s.stream AND l.lease_until >= now() AND l.holder <> $1
)
ORDER BY s.oldest, s.first_id
LIMIT $2
"""

# One statement, so two relays racing for a free or expired lease cannot both win: the loser's
# ON CONFLICT sees the winner's fresh row and its WHERE fails (no row returned).
_TAKE_LEASE = """
INSERT INTO outbox_leases (stream, holder, lease_until)
VALUES ($1, $2, now() + make_interval(secs => $3))
ON CONFLICT (stream) DO UPDATE SET holder = EXCLUDED.holder, lease_until = EXCLUDED.lease_until
WHERE outbox_leases.lease_until < now() OR outbox_leases.holder = EXCLUDED.holder
RETURNING stream
"""

_RELEASE = "DELETE FROM outbox_leases WHERE stream = $1 AND holder = $2"

_TASK_EVENTS = """
SELECT id, seq, event_type, payload, created_at FROM task_events
WHERE task_id = $1 AND published_at IS NULL
ORDER BY seq, id
LIMIT $2
"""

_OUTBOX_EVENTS = """
SELECT id, topic_kind, event_id, event_type, subject, data, created_at FROM outbox_events
WHERE stream = $1 AND published_at IS NULL
ORDER BY id
LIMIT $2
"""

_MARK_TASK_EVENT = "UPDATE task_events SET published_at = now() WHERE id = $1 AND published_at IS NULL"
_MARK_OUTBOX_EVENT = "UPDATE outbox_events SET published_at = now() WHERE id = $1 AND published_at IS NULL"

# Backend ``none``: a batch of the oldest unrelayed rows marked in one statement per table.
_MARK_TASK_BATCH = """
WITH m AS (
  UPDATE task_events SET published_at = now()
  WHERE id IN (SELECT id FROM task_events WHERE published_at IS NULL LIMIT $1)
  RETURNING 1
) SELECT count(*) FROM m
"""
_MARK_OUTBOX_BATCH = """
WITH m AS (
  UPDATE outbox_events SET published_at = now()
  WHERE id IN (SELECT id FROM outbox_events WHERE published_at IS NULL LIMIT $1)
  RETURNING 1
) SELECT count(*) FROM m
"""

# Seconds since the oldest unrelayed event was written (0 when there is none).
_LAG = """
SELECT COALESCE(extract(epoch FROM now() - least(
  (SELECT min(created_at) FROM task_events WHERE published_at IS NULL),
  (SELECT min(created_at) FROM outbox_events WHERE published_at IS NULL)
)), 0)::float8
"""


@dataclass(frozen=True, slots=True)
class PendingEvent:
    """One unrelayed event, as stored.

    Attributes:
        row_id: the row's id in its table (``task_events`` when ``seq`` is set, else ``outbox_events``).
        event_type: ``task.completed``, ``webhook.attempt``, ``settings.changed``…
        data: a task event's payload (the transition) or an outbox event's data.
        created_at: when the event was written.
        seq: a task event's sequence number (None for outbox events).
        topic_kind: an outbox event's ``EventTopics`` field name (None for task events).
        event_id: an outbox event's deterministic id (None for task events, whose id is derived).
        subject: an outbox event's subject (None for task events: the task id).
    """

    row_id: int
    event_type: str
    data: dict[str, Any]
    created_at: datetime
    seq: int | None = None
    topic_kind: str | None = None
    event_id: str | None = None
    subject: str | None = None

    @property
    def is_task_event(self) -> bool:
        """Whether the row is a ``task_events`` row."""
        return self.seq is not None


def task_stream(stream: str) -> uuid.UUID | None:
    """The task id of a task's stream; None for an ``outbox_events`` stream (``settings:…``)."""
    try:
        return uuid.UUID(stream)
    except ValueError:
        return None


def _object(value: Any) -> dict[str, Any]:
    loaded = json.loads(value) if isinstance(value, str) else value
    return dict(loaded) if isinstance(loaded, dict) else {"value": loaded}


class OutboxRepository:
    """Queries of the relay on the service's pool (errors are the caller's to survive)."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        """Use ``pool`` (started)."""
        self._pool = pool

    async def candidate_streams(self, holder: str, limit: int) -> list[str]:
        """Streams with unrelayed events not leased by another relay, oldest backlog first."""
        rows = await self._pool.fetch(_CANDIDATES, holder, limit)
        return [row["stream"] for row in rows]

    async def take_lease(self, stream: str, holder: str, seconds: float) -> bool:
        """Take ``stream`` for ``seconds`` if it is free, expired or already ``holder``'s (renewal)."""
        return await self._pool.fetchval(_TAKE_LEASE, stream, holder, seconds) is not None

    async def release(self, stream: str, holder: str) -> None:
        """Give ``stream`` up (nothing happens if the lease has passed to another relay)."""
        await self._pool.execute(_RELEASE, stream, holder)

    async def pending(self, stream: str, limit: int) -> list[PendingEvent]:
        """The first ``limit`` unrelayed events of ``stream``, in publishing order."""
        task_id = task_stream(stream)
        if task_id is not None:
            rows = await self._pool.fetch(_TASK_EVENTS, task_id, limit)
            return [
                PendingEvent(
                    row_id=r["id"],
                    event_type=r["event_type"],
                    data=_object(r["payload"]),
                    created_at=r["created_at"],
                    seq=r["seq"],
                )
                for r in rows
            ]
        rows = await self._pool.fetch(_OUTBOX_EVENTS, stream, limit)
        return [
            PendingEvent(
                row_id=r["id"],
                event_type=r["event_type"],
                data=_object(r["data"]),
                created_at=r["created_at"],
                topic_kind=r["topic_kind"],
                event_id=r["event_id"],
                subject=r["subject"],
            )
            for r in rows
        ]

    async def mark_relayed(self, event: PendingEvent) -> None:
        """Record that ``event`` was published (or deliberately not: an unpublished kind)."""
        query = _MARK_TASK_EVENT if event.is_task_event else _MARK_OUTBOX_EVENT
        await self._pool.execute(query, event.row_id)

    async def mark_batch_relayed(self, limit: int) -> int:
        """Mark up to ``limit`` unrelayed rows of each outbox relayed unsent; how many were marked."""
        tasks = await self._pool.fetchval(_MARK_TASK_BATCH, limit)
        others = await self._pool.fetchval(_MARK_OUTBOX_BATCH, limit)
        return int(tasks) + int(others)

    async def lag_seconds(self) -> float:
        """Age of the oldest unrelayed event, seconds (0 when everything is relayed)."""
        return float(await self._pool.fetchval(_LAG))
