"""The task model and the validation rules both transports share."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, Generic, TypeVar

from common_operations.domain.errors import ValidationFailed
from common_operations.domain.status import TaskStatus

T = TypeVar("T")

DEFAULT_MAX_RETRIES = 3
MAX_PAGE_SIZE = 1000
DEFAULT_PAGE_SIZE = 20
MAX_SEARCH_LENGTH = 200
MAX_TEXT_LENGTH = 1024
MAX_ERROR_LENGTH = 4000
MAX_COUNT = 2**63 - 1  # BIGINT columns


@dataclass(frozen=True, slots=True)
class RecordCounts:
    """How many records a task has seen; ``total`` may be unknown (0)."""

    total: int = 0
    processed: int = 0
    success: int = 0
    failed: int = 0

    @property
    def percentage(self) -> float:
        """``processed / total * 100`` capped at 100; 0 while the total is unknown."""
        return progress_percentage(self.processed, self.total)


def progress_percentage(processed: int, total: int) -> float:
    """Progress in percent, capped at 100 (DESIGN.md §4)."""
    if total <= 0:
        return 0.0
    return min(100.0, round(processed / total * 100.0, 2))


@dataclass(slots=True)
class Task:
    """A task as the API shows it (the Postgres mirror of the workflow's state)."""

    id: uuid.UUID
    task_type: str
    entity_type: str
    status: TaskStatus
    priority: int = 0
    requested_by: str = ""
    params: dict[str, Any] = field(default_factory=dict)
    file_name: str | None = None
    file_size: int | None = None
    input_file_url: str | None = None
    output_file_url: str | None = None
    counts: RecordCounts = field(default_factory=RecordCounts)
    scheduled_at: datetime | None = None
    started_at: datetime | None = None
    completed_at: datetime | None = None
    error_message: str | None = None
    retry_count: int = 0
    max_retries: int = DEFAULT_MAX_RETRIES
    created_at: datetime | None = None
    updated_at: datetime | None = None
    seq: int = 0
    run_id: str | None = None
    # Set while the workflow waits to retry a failed attempt by itself (the task type's auto_retry).
    next_retry_at: datetime | None = None
    # Fence token of the workflow run chain that owns the task's state (see db.repository).
    owner_run_id: str | None = None

    @property
    def progress_percentage(self) -> float:
        """Percentage derived from the counts."""
        return self.counts.percentage


@dataclass(frozen=True, slots=True)
class TaskLog:
    """One log line of a task; ``details`` is a JSON document as text (seed wire contract)."""

    id: int
    task_id: uuid.UUID
    seq: int
    level: str
    message: str
    created_at: datetime
    details: str | None = None


@dataclass(frozen=True, slots=True)
class TaskEvent:
    """One event of a task's history; ``published_at`` is set by the outbox relay."""

    id: int
    task_id: uuid.UUID
    seq: int
    event_type: str
    status: TaskStatus
    payload: dict[str, Any]
    created_at: datetime
    published_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class CreateTask:
    """A validated request to create a task."""

    task_type: str
    entity_type: str
    requested_by: str
    priority: int = 0
    params: dict[str, Any] = field(default_factory=dict)
    file_name: str | None = None
    file_size: int | None = None
    scheduled_at: datetime | None = None
    max_retries: int | None = None  # None: the service's configured default


@dataclass(frozen=True, slots=True)
class ProgressReport:
    """What an external worker reports through ``UpdateTaskProgress``.

    ``None`` means "unchanged" for every count. With ``increment`` the processed, success and failed
    counts are added to the task's (parallel workers each report their own share); ``total`` is
    always absolute. ``report_id`` makes a report idempotent: a report whose id was already applied
    is not applied again (it becomes the Temporal Update id).
    """

    processed_records: int | None = None
    success_records: int | None = None
    failed_records: int | None = None
    total_records: int | None = None
    error_message: str | None = None
    is_completed: bool = False
    message: str | None = None
    report_id: str | None = None
    increment: bool = False


@dataclass(frozen=True, slots=True)
class TaskQuery:
    """Filters, search and paging of ListTasks."""

    page: int = 1
    page_size: int = DEFAULT_PAGE_SIZE
    task_type: str | None = None
    entity_type: str | None = None
    status: TaskStatus | None = None
    requested_by: str | None = None
    start_date: datetime | None = None
    end_date: datetime | None = None
    search: str | None = None

    @property
    def offset(self) -> int:
        """Rows skipped before this page."""
        return (self.page - 1) * self.page_size


@dataclass(frozen=True, slots=True)
class PageRequest:
    """Paging of logs and events."""

    page: int = 1
    page_size: int = 100

    @property
    def offset(self) -> int:
        """Rows skipped before this page."""
        return (self.page - 1) * self.page_size


@dataclass(frozen=True, slots=True)
class Page(Generic[T]):
    """One page of results and the total across all pages."""

    items: list[T]
    total: int
    page: int
    page_size: int


def parse_task_id(raw: str) -> uuid.UUID:
    """Parse a task id, rejecting anything that is not a UUID.

    Raises:
        ValidationFailed: not a UUID.
    """
    try:
        return uuid.UUID(str(raw).strip())
    except (ValueError, AttributeError) as exc:
        raise ValidationFailed(f"task id {raw!r} is not a valid UUID", field="id") from exc


def parse_params(raw: dict[str, Any] | str | None) -> dict[str, Any]:
    """Accept ``params`` as a JSON object or as a JSON string holding one (as seed clients send it).

    Raises:
        ValidationFailed: a string that is not a JSON object.
    """
    if raw is None or raw == "":
        return {}
    if isinstance(raw, dict):
        return raw
    try:
        value = json.loads(raw, parse_constant=_reject_constant)
    except json.JSONDecodeError as exc:
        raise ValidationFailed(f"params is not valid JSON: {exc.msg}", field="params") from exc
    if not isinstance(value, dict):
        raise ValidationFailed("params must be a JSON object", field="params")
    return value


def _reject_constant(name: str) -> Any:
    # Python's json accepts NaN/Infinity, which are not JSON and which Postgres' jsonb refuses.
    raise ValidationFailed(f"params is not valid JSON: {name} is not a JSON number", field="params")


def _reject_nul(value: str, name: str) -> None:
    # Postgres text and jsonb cannot hold NUL; refuse it here rather than fail in the mirror.
    if "\x00" in value:
        raise ValidationFailed(f"{name} must not contain NUL characters", field=name)


def _check_count(value: int | None, name: str) -> None:
    if value is not None and not 0 <= value <= MAX_COUNT:
        raise ValidationFailed(f"{name} must be between 0 and {MAX_COUNT}", field=name)


def _require_text(value: str, name: str, *, allow_empty: bool = False) -> str:
    _reject_nul(value, name)
    value = value.strip()
    if not value and not allow_empty:
        raise ValidationFailed(f"{name} is required", field=name)
    if len(value) > MAX_TEXT_LENGTH:
        raise ValidationFailed(f"{name} is longer than {MAX_TEXT_LENGTH} characters", field=name)
    return value


def validate_create(cmd: CreateTask) -> CreateTask:
    """Check a create request's ranges and required fields.

    Returns:
        The request with its text fields trimmed.

    Raises:
        ValidationFailed: a field is missing or out of range.
    """
    _check_count(cmd.file_size, "fileSize")
    if "\\u0000" in json.dumps(cmd.params):
        raise ValidationFailed("params must not contain NUL characters", field="params")
    if cmd.max_retries is not None and not 0 <= cmd.max_retries <= 100:
        raise ValidationFailed("maxRetries must be between 0 and 100", field="maxRetries")
    if not -1000 <= cmd.priority <= 1000:
        raise ValidationFailed("priority must be between -1000 and 1000", field="priority")
    if cmd.scheduled_at is not None and cmd.scheduled_at.tzinfo is None:
        raise ValidationFailed("scheduledAt must carry a time zone (RFC 3339)", field="scheduledAt")
    return CreateTask(
        task_type=_require_text(cmd.task_type, "taskType"),
        entity_type=_require_text(cmd.entity_type, "entityType", allow_empty=True),
        requested_by=_require_text(cmd.requested_by, "requestedBy"),
        priority=cmd.priority,
        params=cmd.params,
        file_name=_require_text(cmd.file_name, "fileName") if cmd.file_name else None,
        file_size=cmd.file_size,
        scheduled_at=cmd.scheduled_at,
        max_retries=cmd.max_retries,
    )


def validate_report_shape(report: ProgressReport) -> None:
    """Checks that need no knowledge of the task: signs and internal consistency.

    Raises:
        ValidationFailed: a negative count, or parts larger than the whole.
    """
    for name, value in (
        ("processedRecords", report.processed_records),
        ("successRecords", report.success_records),
        ("failedRecords", report.failed_records),
        ("totalRecords", report.total_records),
    ):
        if value is not None and value < 0:
            raise ValidationFailed(f"{name} must not be negative", field=name)
        _check_count(value, name)
    for name, text in (("errorMessage", report.error_message), ("message", report.message)):
        if text is None:
            continue
        if len(text) > MAX_ERROR_LENGTH:
            raise ValidationFailed(f"{name} is longer than {MAX_ERROR_LENGTH} characters", field=name)
        _reject_nul(text, name)


def apply_report(counts: RecordCounts, report: ProgressReport) -> RecordCounts:
    """The counts after ``report``, validated against each other.

    Raises:
        ValidationFailed: ``processed > total`` or ``success + failed > processed``.
    """
    validate_report_shape(report)
    new = RecordCounts(
        total=counts.total if report.total_records is None else report.total_records,
        processed=counts.processed if report.processed_records is None else report.processed_records,
        success=counts.success if report.success_records is None else report.success_records,
        failed=counts.failed if report.failed_records is None else report.failed_records,
    )
    if new.total and new.processed > new.total:
        raise ValidationFailed(
            f"processedRecords ({new.processed}) exceeds totalRecords ({new.total})",
            field="processedRecords",
        )
    if new.success + new.failed > new.processed:
        raise ValidationFailed(
            f"successRecords + failedRecords ({new.success + new.failed}) exceeds "
            f"processedRecords ({new.processed})",
            field="successRecords",
        )
    return new


def validate_query(query: TaskQuery) -> TaskQuery:
    """Check ListTasks paging, dates and search.

    Raises:
        ValidationFailed: out-of-range paging, reversed dates or an over-long search.

    Returns:
        The query, with ``page_size`` capped at :data:`MAX_PAGE_SIZE`.
    """
    if query.page_size > MAX_PAGE_SIZE:
        # The seed API caps rather than rejects large pages; existing clients rely on it.
        query = replace(query, page_size=MAX_PAGE_SIZE)
    validate_paging(query.page, query.page_size, MAX_PAGE_SIZE)
    for name, value in (("startDate", query.start_date), ("endDate", query.end_date)):
        if value is not None and value.tzinfo is None:
            raise ValidationFailed(f"{name} must carry a time zone (RFC 3339)", field=name)
    if query.start_date and query.end_date and query.start_date > query.end_date:
        raise ValidationFailed("startDate is after endDate", field="startDate")
    if query.search is not None:
        if len(query.search) > MAX_SEARCH_LENGTH:
            raise ValidationFailed(f"search is longer than {MAX_SEARCH_LENGTH} characters", field="search")
        _reject_nul(query.search, "search")
    for name, text in (
        ("taskType", query.task_type),
        ("entityType", query.entity_type),
        ("requestedBy", query.requested_by),
    ):
        if text is not None:
            _reject_nul(text, name)
    return query


def validate_paging(page: int, page_size: int, max_page_size: int) -> None:
    """Pages are 1-based; sizes run from 1 to ``max_page_size``.

    Raises:
        ValidationFailed: either value out of range.
    """
    if page < 1:
        raise ValidationFailed("page must be 1 or more", field="page")
    if not 1 <= page_size <= max_page_size:
        raise ValidationFailed(f"pageSize must be between 1 and {max_page_size}", field="pageSize")


def escape_like(text: str) -> str:
    """Escape ``%``, ``_`` and the escape character for a SQL LIKE pattern."""
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
