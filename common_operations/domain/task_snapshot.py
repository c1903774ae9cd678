"""A task as a JSON object with the REST API's names and shapes (events, webhooks).

The transports are not imported (domain and services never depend on them); the keys and values
match REST ``TaskOut``, so a subscriber or a webhook receiver reads a task like an API answer.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from common_operations.domain.json_text import json_text
from common_operations.domain.task import Task


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def task_snapshot(task: Task) -> dict[str, Any]:
    """The task as the REST API shows it (``TaskOut``, lowerCamelCase), as plain JSON values."""
    return {
        "id": str(task.id),
        "taskType": task.task_type,
        "entityType": task.entity_type,
        "status": task.status.value,
        "priority": task.priority,
        "requestedBy": task.requested_by,
        "params": json_text(task.params),
        "paramsObject": task.params,
        "fileName": task.file_name,
        "fileSize": task.file_size,
        "inputFileUrl": task.input_file_url,
        "outputFileUrl": task.output_file_url,
        "totalRecords": task.counts.total,
        "processedRecords": task.counts.processed,
        "successRecords": task.counts.success,
        "failedRecords": task.counts.failed,
        "progressPercentage": task.progress_percentage,
        "scheduledAt": _iso(task.scheduled_at),
        "startedAt": _iso(task.started_at),
        "completedAt": _iso(task.completed_at),
        "errorMessage": task.error_message,
        "retryCount": task.retry_count,
        "maxRetries": task.max_retries,
        "createdAt": _iso(task.created_at),
        "updatedAt": _iso(task.updated_at),
        "nextRetryAt": _iso(task.next_retry_at),
        "manifest": task.manifest,
        "sourceTaskId": str(task.source_task_id) if task.source_task_id else None,
        "filesAvailable": [k for k in ("output", "result", "input") if isinstance(task.files.get(k), dict)],
        "callbackUrl": task.callback_url,
    }
