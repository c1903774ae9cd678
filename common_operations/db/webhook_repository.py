"""What webhook deliveries write: an event and a log line per attempt and outcome.

These rows sit beside the task's state without changing it: the task row (its status and sequence,
which only the task's workflow writes) is untouched, and any number of rows may share a sequence.
They are recorded at the sequence of the transition that caused the webhook, so the history reads
"task.failed, webhook.attempt, webhook.attempt, webhook.delivered" in ``(seq, id)`` order.
"""

from __future__ import annotations

import json
import uuid
from datetime import datetime
from typing import Any

import asyncpg

# ``published_at`` is set at once: delivery records are the service's own bookkeeping, not task
# lifecycle events for the outbox relay to publish.
_RECORD = """
WITH t AS (
  SELECT id FROM tasks WHERE id = $1
), e AS (
  INSERT INTO task_events (task_id, seq, event_type, status, payload, created_at, published_at)
  SELECT t.id, $2, $3, $4, $5::jsonb, $6, $6 FROM t
  RETURNING id
)
INSERT INTO task_logs (task_id, seq, level, message, details, created_at)
SELECT t.id, $2, $7, $8, $5, $6 FROM t
RETURNING id
"""


class WebhookRepository:
    """Records webhook attempts and outcomes in a task's events and logs."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        """Write through ``pool`` (the Piccolo engine's asyncpg pool)."""
        self._pool = pool

    async def record(
        self,
        task_id: uuid.UUID,
        seq: int,
        status: str,
        event_type: str,
        message: str,
        *,
        level: str = "info",
        **payload: Any,
    ) -> bool:
        """Add an event ``event_type`` and a log line ``message`` at sequence ``seq``.

        Args:
            task_id: the task.
            seq: the sequence of the transition the webhook reports.
            status: the status that transition entered (the event's status).
            event_type: ``webhook.attempt``, ``webhook.delivered`` or ``webhook.failed``.
            message: the log line (also the payload's ``message``).
            level: the log line's level.
            **payload: the event's payload (and the log line's details).

        Returns:
            Whether the task still exists (nothing is written for a deleted task).
        """
        document = json.dumps({"message": message, **payload})
        added = await self._pool.fetchval(
            _RECORD, task_id, seq, event_type, status, document, datetime.now().astimezone(), level, message
        )
        return added is not None
