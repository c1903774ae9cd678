"""A task as a JSON object with the REST API's lowerCamelCase field names (events, webhooks)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from common_operations.domain.task import Task


def _instant(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def task_snapshot(task: Task) -> dict[str, Any]:
    """The fields of REST ``TaskOut`` that describe the task itself, JSON-ready.

    The transports are not imported (services never depend on them); the names and meanings match
    ``TaskOut`` so a subscriber can read an event's task like an API answer. ``params`` is the
    object itself (the API's ``paramsObject``), not the seed's JSON-in-a-string.
    """
    return {
        "id": str(task.id),
        "taskType": task.task_type,
        "entityType": task.entity_type,
        "status": task.status.value,
        "priority": task.priority,
        "requestedBy": task.requested_by,
        "params": task.params,
        "fileName": task.file_name,
        "fileSize": task.file_size,
        "inputFileUrl": task.input_file_url,
        "outputFileUrl": task.output_file_url,
        "totalRecords": task.counts.total,
        "processedRecords": task.counts.processed,
        "successRecords": task.counts.success,
        "failedRecords": task.counts.failed,
        "progressPercentage": task.progress_percentage,
        "scheduledAt": _instant(task.scheduled_at),
        "startedAt": _instant(task.started_at),
        "completedAt": _instant(task.completed_at),
        "errorMessage": task.error_message,
        "retryCount": task.retry_count,
        "maxRetries": task.max_retries,
        "createdAt": _instant(task.created_at),
        "updatedAt": _instant(task.updated_at),
        "nextRetryAt": _instant(task.next_retry_at),
        "sourceTaskId": str(task.source_task_id) if task.source_task_id else None,
        "callbackUrl": task.callback_url,
    }
