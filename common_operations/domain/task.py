"""The task model and the validation rules both transports share."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, Generic, TypeVar

from common_operations.domain.errors import PayloadTooLarge, ValidationFailed, quoted
from common_operations.domain.status import TaskStatus

T = TypeVar("T")

DEFAULT_MAX_RETRIES = 3
MAX_PAGE_SIZE = 1000
DEFAULT_PAGE_SIZE = 20
MAX_COUNT = 2**63 - 1  # BIGINT columns
# Pages are numbered like gRPC's int32; it also keeps (page - 1) * page_size within a BIGINT OFFSET.
MAX_PAGE = 2**31 - 1

# What the API accepts is what the mirror can store: each text limit equals its Postgres column
# (tests/domain/test_limits.py compares them with db/tables.py), so an over-long value is a 400 here
# instead of a failed INSERT. Lengths count characters, as varchar(n) does.
MAX_TASK_TYPE_LENGTH = 100  # tasks.task_type varchar(100)
MAX_ENTITY_TYPE_LENGTH = 100  # tasks.entity_type varchar(100)
MAX_REQUESTED_BY_LENGTH = 255  # tasks.requested_by varchar(255)
# tasks.file_name is text; a name longer than this is a client bug, not a file (most file systems
# stop at 255 bytes per path component and 4096 per path).
MAX_FILE_NAME_LENGTH = 1024
MAX_SEARCH_LENGTH = 200
MAX_ERROR_LENGTH = 4000
# params travels in the workflow's input (Temporal refuses payloads over 2 MiB) and is copied into
# every run's history, so it is bounded well below that: its compact JSON encoding (UTF-8) and its
# nesting (the params object itself is depth 1).
MAX_PARAMS_BYTES = 64 * 1024
MAX_PARAMS_DEPTH = 32
MAX_REPORT_ID_LENGTH = 200
MAX_REASON_LENGTH = 1000


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
    # Stored objects of a bulk task by role ("input", "output", "result"): key, name, size,
    # content type, and the output's manifest.
    files: dict[str, Any] = field(default_factory=dict)
    # The import whose failed rows this task imports again.
    source_task_id: uuid.UUID | None = None
    # Where the final state is POSTed, signed (see services.webhooks).
    callback_url: str | None = None
    # The principal whose request created the task; differs from requested_by when a service
    # created it on behalf of a user (None for tasks older than this column).
    created_by: str | None = None
    # Only on the answer to CreateTask: where (and until when) the input file may be uploaded.
    upload_url: str | None = None
    upload_url_expires_at: datetime | None = None

    @property
    def manifest(self) -> dict[str, Any] | None:
        """Row count, byte size and SHA-256 of the stored output, once there is one."""
        output = self.files.get("output")
        manifest = output.get("manifest") if isinstance(output, dict) else None
        return manifest if isinstance(manifest, dict) else None

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
    content_type: str | None = None
    callback_url: str | None = None
    # The caller's key for a retried create: same key and body, same task (not a second one).
    idempotency_key: str | None = None


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
        raise ValidationFailed(f"task id {quoted(raw)} is not a valid UUID", field="id") from exc


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
    except ValueError as exc:
        # Python refuses integers of more than 4300 digits (sys.get_int_max_str_digits).
        raise ValidationFailed(f"params is not valid JSON: {exc}", field="params") from exc
    except RecursionError as exc:
        # json recurses per nesting level; far deeper than MAX_PARAMS_DEPTH in any case.
        raise _too_deep() from exc
    if not isinstance(value, dict):
        raise ValidationFailed("params must be a JSON object", field="params")
    return value


def _reject_constant(name: str) -> Any:
    # Python's json accepts NaN/Infinity, which are not JSON and which Postgres' jsonb refuses.
    raise ValidationFailed(f"params is not valid JSON: {name} is not a JSON number", field="params")


def _too_deep() -> ValidationFailed:
    return ValidationFailed(
        f"params is nested deeper than {MAX_PARAMS_DEPTH} levels", field="params", limit=MAX_PARAMS_DEPTH
    )


def _reject_nul(value: str, name: str) -> None:
    # Postgres text and jsonb cannot hold NUL, and asyncpg cannot encode an unpaired surrogate
    # (JSON's "\ud800" decodes to one); refuse both here rather than fail in the mirror.
    if "\x00" in value:
        raise ValidationFailed(f"{name} must not contain NUL characters", field=name)
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValidationFailed(f"{name} is not valid Unicode (unpaired surrogate)", field=name) from exc


def _check_count(value: int | None, name: str) -> None:
    if value is not None and not 0 <= value <= MAX_COUNT:
        raise ValidationFailed(f"{name} must be between 0 and {MAX_COUNT}", field=name)


def _check_length(value: str, name: str, limit: int) -> None:
    if len(value) > limit:
        raise ValidationFailed(f"{name} is longer than {limit} characters", field=name, limit=limit)


def _require_text(value: str, name: str, limit: int, *, allow_empty: bool = False) -> str:
    _reject_nul(value, name)
    value = value.strip()
    if not value and not allow_empty:
        raise ValidationFailed(f"{name} is required", field=name)
    _check_length(value, name, limit)
    return value


def _check_timestamp(value: datetime | None, name: str) -> None:
    """An instant the API can store and show: time-zone aware and within years 1 to 9999 in UTC.

    Python's datetime (and protobuf's Timestamp) stop at those years; an offset can push a
    value that parses (``0001-01-01T00:00:00+01:00``) outside them once converted to UTC.
    """
    if value is None:
        return
    if value.utcoffset() is None:
        raise ValidationFailed(f"{name} must carry a time zone (RFC 3339)", field=name)
    try:
        value.astimezone(UTC)
    except OverflowError as exc:
        raise ValidationFailed(
            f"{name} is out of range (0001-01-01T00:00:00Z to 9999-12-31T23:59:59Z)", field=name
        ) from exc


def _check_double(number: int) -> None:
    # gRPC shows params as a Struct, whose numbers are doubles: an integer beyond a double's range
    # (about 1.8e308) would be stored and then fail every read of the task over gRPC.
    try:
        float(number)
    except OverflowError as exc:
        raise ValidationFailed(
            "params holds a number beyond the range of a double (about 1.8e308)", field="params"
        ) from exc


def validate_params(params: dict[str, Any]) -> None:
    """``params`` must be storable JSON within :data:`MAX_PARAMS_DEPTH` and :data:`MAX_PARAMS_BYTES`.

    Raises:
        ValidationFailed: nested too deeply, a NUL or unpaired surrogate in a key or string, a
            non-finite number or one beyond a double's range, or a value that is not JSON.
        PayloadTooLarge: the compact JSON encoding is larger than :data:`MAX_PARAMS_BYTES`.
    """
    # Depth first, without recursion, so that the encoding below cannot hit the recursion limit.
    stack: list[tuple[Any, int]] = [(params, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
            for key in item:
                if isinstance(key, str):
                    _reject_nul(key, "params")
        elif isinstance(item, list | tuple):
            children = item
        else:
            if isinstance(item, str):
                _reject_nul(item, "params")
            elif isinstance(item, int) and not isinstance(item, bool):
                _check_double(item)
            continue
        if depth > MAX_PARAMS_DEPTH:
            raise _too_deep()
        stack.extend((child, depth + 1) for child in children)
    try:
        encoded = json.dumps(params, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ValidationFailed(f"params is not valid JSON: {exc}", field="params") from exc
    size = len(encoded.encode("utf-8"))
    if size > MAX_PARAMS_BYTES:
        raise PayloadTooLarge(
            f"params is {size} bytes as compact JSON; at most {MAX_PARAMS_BYTES} are accepted",
            field="params",
            limit=MAX_PARAMS_BYTES,
            size=size,
        )


MAX_CONTENT_TYPE_LENGTH = 255


def validate_create(cmd: CreateTask) -> CreateTask:
    """Check a create request's ranges, lengths and required fields.

    Returns:
        The request with its text fields trimmed.

    Raises:
        ValidationFailed: a field is missing, too long or out of range.
        PayloadTooLarge: ``params`` is larger than :data:`MAX_PARAMS_BYTES`.
    """
    _check_count(cmd.file_size, "fileSize")
    if cmd.max_retries is not None and not 0 <= cmd.max_retries <= 100:
        raise ValidationFailed("maxRetries must be between 0 and 100", field="maxRetries")
    if not -1000 <= cmd.priority <= 1000:
        raise ValidationFailed("priority must be between -1000 and 1000", field="priority")
    _check_timestamp(cmd.scheduled_at, "scheduledAt")
    # replace(), not a new CreateTask: every field not checked here (contentType, callbackUrl,
    # the idempotency key) must reach the service as it came.
    validated = replace(
        cmd,
        task_type=_require_text(cmd.task_type, "taskType", MAX_TASK_TYPE_LENGTH),
        entity_type=_require_text(cmd.entity_type, "entityType", MAX_ENTITY_TYPE_LENGTH, allow_empty=True),
        requested_by=_require_text(cmd.requested_by, "requestedBy", MAX_REQUESTED_BY_LENGTH),
        file_name=_require_text(cmd.file_name, "fileName", MAX_FILE_NAME_LENGTH) if cmd.file_name else None,
        content_type=_require_text(cmd.content_type, "contentType", MAX_CONTENT_TYPE_LENGTH)
        if cmd.content_type
        else None,
    )
    # Last: the other fields are cheap to check, and a 400 names a mistake better than a 413.
    validate_params(cmd.params)
    return validated


def parse_cancel_reason(raw: str | None) -> str | None:
    """The reason given for a cancellation, trimmed; empty means none (proto3 cannot tell them apart).

    Raises:
        ValidationFailed: longer than :data:`MAX_REASON_LENGTH` characters, or not storable text.
    """
    if raw is None:
        return None
    _reject_nul(raw, "reason")
    reason = raw.strip()
    _check_length(reason, "reason", MAX_REASON_LENGTH)
    return reason or None


def validate_report_shape(report: ProgressReport) -> None:
    """Checks that need no knowledge of the task: signs, lengths and the idempotency key.

    Raises:
        ValidationFailed: a negative count, an over-long text, or a ``reportId`` that is empty, longer
            than :data:`MAX_REPORT_ID_LENGTH` characters or not printable.
    """
    if report.report_id is not None and not (
        # It becomes the Temporal Update id, shown in the Web UI and history: printable text only.
        0 < len(report.report_id) <= MAX_REPORT_ID_LENGTH and report.report_id.isprintable()
    ):
        raise ValidationFailed(
            f"reportId must be 1 to {MAX_REPORT_ID_LENGTH} printable characters", field="reportId"
        )
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

    Absolute counts replace the task's; with ``report.increment`` processed, success and failed are
    added to them (``total`` is absolute either way).

    Raises:
        ValidationFailed: ``processed > total``, ``success + failed > processed``, or a sum beyond
            the largest count.
    """
    validate_report_shape(report)

    def merged(current: int, value: int | None, name: str) -> int:
        if value is None:
            return current
        if not report.increment:
            return value
        _check_count(current + value, name)
        return current + value

    new = RecordCounts(
        total=counts.total if report.total_records is None else report.total_records,
        processed=merged(counts.processed, report.processed_records, "processedRecords"),
        success=merged(counts.success, report.success_records, "successRecords"),
        failed=merged(counts.failed, report.failed_records, "failedRecords"),
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
    """Check ListTasks paging, dates, filters and search.

    Raises:
        ValidationFailed: out-of-range paging, reversed or unstorable dates, an over-long filter or
            search.

    Returns:
        The query, with ``page_size`` capped at :data:`MAX_PAGE_SIZE`.
    """
    if query.page_size > MAX_PAGE_SIZE:
        # The seed API caps rather than rejects large pages; existing clients rely on it.
        query = replace(query, page_size=MAX_PAGE_SIZE)
    validate_paging(query.page, query.page_size, MAX_PAGE_SIZE)
    _check_timestamp(query.start_date, "startDate")
    _check_timestamp(query.end_date, "endDate")
    if query.start_date and query.end_date and query.start_date > query.end_date:
        raise ValidationFailed("startDate is after endDate", field="startDate")
    # A filter longer than its column can match nothing; refusing it tells the caller of the bug.
    for name, text, limit in (
        ("search", query.search, MAX_SEARCH_LENGTH),
        ("taskType", query.task_type, MAX_TASK_TYPE_LENGTH),
        ("entityType", query.entity_type, MAX_ENTITY_TYPE_LENGTH),
        ("requestedBy", query.requested_by, MAX_REQUESTED_BY_LENGTH),
    ):
        if text is not None:
            _check_length(text, name, limit)
            _reject_nul(text, name)
    return query


def validate_paging(page: int, page_size: int, max_page_size: int) -> None:
    """Pages are 1-based up to :data:`MAX_PAGE`; sizes run from 1 to ``max_page_size``.

    Raises:
        ValidationFailed: either value out of range.
    """
    if page < 1:
        raise ValidationFailed("page must be 1 or more", field="page")
    if page > MAX_PAGE:
        raise ValidationFailed(f"page must be at most {MAX_PAGE}", field="page")
    if not 1 <= page_size <= max_page_size:
        raise ValidationFailed(f"pageSize must be between 1 and {max_page_size}", field="pageSize")


def escape_like(text: str) -> str:
    """Escape ``%``, ``_`` and the escape character for a SQL LIKE pattern."""
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
