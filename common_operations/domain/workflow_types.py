"""Payloads exchanged with ``TaskWorkflow``: small, JSON-friendly, sandbox-safe.

Large data never travels here; workflows carry ids, counts and keys.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

WORKFLOW_TYPE = "TaskWorkflow"
MIRROR_ACTIVITY = "mirror_task_state"
PROGRESS_QUERY = "progress"
REPORT_PROGRESS_UPDATE = "report_progress"

SA_TASK_TYPE = "TaskType"
SA_ENTITY_TYPE = "EntityType"
SA_TASK_STATUS = "TaskStatus"
SA_REQUESTED_BY = "RequestedBy"
SA_PROGRESS = "Progress"
KEYWORD_SEARCH_ATTRIBUTES = (SA_TASK_TYPE, SA_ENTITY_TYPE, SA_TASK_STATUS, SA_REQUESTED_BY)
INT_SEARCH_ATTRIBUTES = (SA_PROGRESS,)


def workflow_id_for(task_id: str) -> str:
    """The Temporal workflow id of a task (DESIGN.md §5)."""
    return f"task-{task_id}"


class HandlerKind(StrEnum):
    """Who does a task type's work."""

    EXTERNAL = "external"
    DELEGATED = "delegated"


@dataclass(frozen=True, slots=True)
class RetrySpec:
    """Temporal retry policy of a delegated activity (exponential backoff)."""

    maximum_attempts: int = 5
    initial_interval_seconds: float = 1.0
    backoff_coefficient: float = 2.0
    maximum_interval_seconds: float = 60.0


@dataclass(frozen=True, slots=True)
class HandlerSpec:
    """How a task type is run; resolved from configuration when the task starts."""

    kind: HandlerKind = HandlerKind.EXTERNAL
    task_queue: str | None = None
    activity: str | None = None
    heartbeat_timeout_seconds: float = 300.0
    retry: RetrySpec = field(default_factory=RetrySpec)


@dataclass(frozen=True, slots=True)
class TaskWorkflowInput:
    """Everything a run needs; ``seq`` is the mirror sequence the run starts after."""

    task_id: str
    task_type: str
    entity_type: str
    requested_by: str
    status: str
    handler: HandlerSpec
    task_timeout_seconds: float
    seq: int
    retry_count: int = 0
    max_retries: int = 3
    scheduled_at: datetime | None = None
    params: dict[str, Any] = field(default_factory=dict)
    total_records: int = 0
    search_attributes: bool = True


@dataclass(frozen=True, slots=True)
class MirrorWrite:
    """A full snapshot of the task's mutable state plus the event and log line it causes.

    Applied only if ``seq`` is newer than the row's, so retries and reordering never move a task
    backwards.
    """

    task_id: str
    seq: int
    run_id: str
    status: str
    event_type: str
    message: str
    level: str = "info"
    total_records: int = 0
    processed_records: int = 0
    success_records: int = 0
    failed_records: int = 0
    progress_percentage: float = 0.0
    started_at: datetime | None = None
    completed_at: datetime | None = None
    error_message: str | None = None
    output_file_url: str | None = None
    at: datetime | None = None


@dataclass(frozen=True, slots=True)
class ProgressSnapshot:
    """Result of the ``progress`` query and of a progress report."""

    task_id: str
    status: str
    total_records: int
    processed_records: int
    success_records: int
    failed_records: int
    progress_percentage: float
    seq: int
    error_message: str | None = None


@dataclass(frozen=True, slots=True)
class DelegatedTaskInput:
    """What a delegated activity on another service's task queue receives."""

    task_id: str
    task_type: str
    entity_type: str
    requested_by: str
    params: dict[str, Any] = field(default_factory=dict)
    attempt_of_task: int = 0


@dataclass(frozen=True, slots=True)
class DelegatedTaskResult:
    """What a delegated activity may return; every field is optional."""

    total_records: int | None = None
    processed_records: int | None = None
    success_records: int | None = None
    failed_records: int | None = None
    output_file_url: str | None = None
    message: str | None = None
