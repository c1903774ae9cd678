"""CreateTask's idempotency key: its rules and the fingerprint of the request it stands for."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC
from typing import Any

from common_operations.domain.errors import ValidationFailed
from common_operations.domain.task import CreateTask

MAX_KEY_LENGTH = 255  # idempotency_keys.key varchar(255)
KEY_FIELD = "idempotencyKey"


def validate_key(key: str) -> str:
    """The key as given, if it is 1 to 255 printable ASCII characters.

    Raises:
        ValidationFailed: it is empty, too long, or holds other characters.
    """
    if not key:
        raise ValidationFailed("the idempotency key must not be empty", field=KEY_FIELD)
    if len(key) > MAX_KEY_LENGTH:
        raise ValidationFailed(
            f"the idempotency key is longer than {MAX_KEY_LENGTH} characters", field=KEY_FIELD
        )
    if not all(" " <= c <= "~" for c in key):
        raise ValidationFailed("the idempotency key must be printable ASCII", field=KEY_FIELD)
    return key


def request_hash(cmd: CreateTask) -> str:
    """SHA-256 of what the request asks for, after defaults (so omitted and explicit defaults match).

    ``params`` is canonical JSON (sorted keys), and ``scheduledAt`` compares as the same instant
    whatever its offset; the key itself is not part of it.
    """
    body: dict[str, Any] = {
        "task_type": cmd.task_type,
        "entity_type": cmd.entity_type,
        "requested_by": cmd.requested_by,
        "priority": cmd.priority,
        "params": cmd.params,
        "file_name": cmd.file_name,
        "file_size": cmd.file_size,
        "scheduled_at": cmd.scheduled_at.astimezone(UTC).isoformat() if cmd.scheduled_at else None,
        "max_retries": cmd.max_retries,
        "content_type": cmd.content_type,
        "callback_url": cmd.callback_url,
    }
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()
