"""Payloads exchanged with ``TaskWorkflow``: small, JSON-friendly, sandbox-safe.

Large data never travels here; workflows carry ids, counts and keys. Every field added to a payload
must have a default, so histories written before the field existed still decode (replay tests).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

WORKFLOW_TYPE = "TaskWorkflow"
RECONCILER_WORKFLOW_TYPE = "TaskReconciler"
MIRROR_ACTIVITY = "mirror_task_state"
AWAIT_UPLOAD_ACTIVITY = "await_task_upload"
IMPORT_ACTIVITY = "run_import"
EXPORT_ACTIVITY = "run_export"
# The retention job: a Schedule starts RETENTION_JOB_WORKFLOW_TYPE, whose one activity creates an
# ordinary ``retention`` task; that task's workflow runs RETENTION_ACTIVITY.
RETENTION_ACTIVITY = "run_retention"
RETENTION_JOB_WORKFLOW_TYPE = "RetentionJob"
START_RETENTION_ACTIVITY = "start_retention_task"
RETENTION_TASK_TYPE = "retention"
# Bulk actions: a ``bulk_action`` task (created by POST /api/v1/operations/bulk-actions) whose
# workflow runs BULK_ACTION_ACTIVITY, which cancels or retries every task matching a filter.
BULK_ACTION_ACTIVITY = "run_bulk_action"
BULK_ACTION_TASK_TYPE = "bulk_action"
# ApplicationError types of bulk jobs that no retry can fix (bad file, bad header, too many errors).
BULK_INPUT_ERROR = "BULK_INPUT_INVALID"
BULK_TOO_MANY_ERRORS = "BULK_TOO_MANY_ERRORS"
UPLOAD_MISSING_ERROR = "UPLOAD_MISSING"
RECONCILE_ACTIVITY = "reconcile_tasks"
PROGRESS_QUERY = "progress"
RECONCILER_STATUS_QUERY = "status"
REPORT_PROGRESS_UPDATE = "report_progress"
RETRY_NOW_UPDATE = "retry_now"
# A ``temporal`` entity sink: the import activity starts SINK_BATCH_WORKFLOW_TYPE on the service's
# own queue for each batch, and that workflow runs the owning service's activity on its queue.
SINK_BATCH_WORKFLOW_TYPE = "SinkBatch"

SA_TASK_TYPE = "TaskType"
SA_ENTITY_TYPE = "EntityType"
SA_TASK_STATUS = "TaskStatus"
SA_REQUESTED_BY = "RequestedBy"
SA_PROGRESS = "Progress"
KEYWORD_SEARCH_ATTRIBUTES = (SA_TASK_TYPE, SA_ENTITY_TYPE, SA_TASK_STATUS, SA_REQUESTED_BY)
INT_SEARCH_ATTRIBUTES = (SA_PROGRESS,)

# Error types (ApplicationError.type) that the workflow raises and the gateway translates.
SUPERSEDED_ERROR = "TASK_SUPERSEDED"
TASK_FAILED_ERROR = "TASK_FAILED"


def workflow_id_for(task_id: str) -> str:
    """The Temporal workflow id of a task (DESIGN.md §5)."""
    return f"task-{task_id}"


def task_id_of(workflow_id: str) -> str:
    """The task id inside a task workflow's id (the inverse of :func:`workflow_id_for`)."""
    return workflow_id.removeprefix("task-")


def retention_schedule_id(task_queue: str) -> str:
    """The one retention Schedule of a task queue (every worker makes sure it exists)."""
    return f"retention-{task_queue}"


def reconciler_workflow_id(task_queue: str) -> str:
    """The one reconciler workflow of a task queue (every worker makes sure it runs; one does)."""
    return f"common-operations-reconciler-{task_queue}"


class HandlerKind(StrEnum):
    """Who does a task type's work."""

    EXTERNAL = "external"
    DELEGATED = "delegated"
    # Built in: this service's bulk activities move the data (files <-> entity sinks).
    IMPORT = "import"
    EXPORT = "export"
    # Built in: deletes final tasks and their files older than a number of days (not a bulk job:
    # it has no input file and no entity sink).
    RETENTION = "retention"
    # Built in: cancels or retries every task matching a filter, as the operator who asked for it.
    BULK_ACTION = "bulk_action"

    @property
    def is_bulk(self) -> bool:
        """Whether this service's own bulk activities do the work."""
        return self in (HandlerKind.IMPORT, HandlerKind.EXPORT)


@dataclass(frozen=True, slots=True)
class RetrySpec:
    """Temporal retry policy of a delegated activity (exponential backoff)."""

    maximum_attempts: int = 5
    initial_interval_seconds: float = 1.0
    backoff_coefficient: float = 2.0
    maximum_interval_seconds: float = 60.0


@dataclass(frozen=True, slots=True)
class AutoRetrySpec:
    """Automatic retries of a failed task, by the workflow itself after a durable timer."""

    attempts: int = 1
    initial_interval_seconds: float = 30.0
    backoff_coefficient: float = 2.0
    maximum_interval_seconds: float = 3600.0

    def delay_seconds(self, retry_number: int) -> float:
        """The wait before automatic retry ``retry_number`` (1-based), capped at the maximum."""
        delay = self.initial_interval_seconds * self.backoff_coefficient ** (retry_number - 1)
        return float(min(delay, self.maximum_interval_seconds))


@dataclass(frozen=True, slots=True)
class HandlerSpec:
    """How a task type is run; resolved from configuration when the task starts."""

    kind: HandlerKind = HandlerKind.EXTERNAL
    task_queue: str | None = None
    activity: str | None = None
    heartbeat_timeout_seconds: float = 300.0
    retry: RetrySpec = field(default_factory=RetrySpec)
    auto_retry: AutoRetrySpec | None = None


@dataclass(frozen=True, slots=True)
class RunLimits:
    """How a run bounds its history and what each progress report costs."""

    # Mirror row, task.progress event and Progress search attribute: at most once per interval
    # (0: after every report the workflow sees, still coalescing reports that arrive together).
    progress_interval_seconds: float = 1.0
    # Continue-as-new after this many reports in one run (or when Temporal suggests it). A delegated
    # run cannot continue as new while its activity works, so it refuses reports beyond this.
    max_reports_per_run: int = 1000
    # Report ids remembered across continue-as-new, so a retried report is applied once.
    remembered_report_ids: int = 500
    # Report messages kept for the next mirror write; the rest are counted, not logged.
    buffered_messages: int = 20


@dataclass(slots=True)
class LogLine:
    """One log line of a task, written with the next mirror write."""

    level: str
    message: str
    at: datetime | None = None
    details: str | None = None


@dataclass(slots=True)
class TaskState:
    """The mutable state of a task's workflow, carried whole across continue-as-new."""

    status: str
    seq: int
    retry_count: int = 0
    total_records: int = 0
    processed_records: int = 0
    success_records: int = 0
    failed_records: int = 0
    started_at: datetime | None = None
    completed_at: datetime | None = None
    error_message: str | None = None
    output_file_url: str | None = None
    # Stored files of a bulk task by role ("output", "result"): key, name, content type, manifest.
    files: dict[str, Any] = field(default_factory=dict)
    # The input file has been seen complete in storage (a bulk task waits for it before it starts).
    input_ready: bool = False
    # Fence token of the run chain that owns the task; None until this attempt's first run sets it.
    owner: str | None = None
    # Whether the owner has taken the task row over (its first write compares-and-sets ``seq``).
    claimed: bool = False
    # When the current attempt times out (task_timeout after it started).
    attempt_deadline: datetime | None = None
    last_report_at: datetime | None = None
    next_retry_at: datetime | None = None
    auto_retries: int = 0
    reports: int = 0
    runs: int = 1
    recent_report_ids: list[str] = field(default_factory=list)
    # Progress not yet mirrored when the previous run continued as new.
    dirty: bool = False
    pending_logs: list[LogLine] = field(default_factory=list)
    omitted_messages: int = 0
    last_message: str | None = None


@dataclass(frozen=True, slots=True)
class TaskWorkflowInput:
    """What a run needs: the task's fixed description and the state it starts from."""

    task_id: str
    task_type: str
    entity_type: str
    requested_by: str
    handler: HandlerSpec
    task_timeout_seconds: float
    state: TaskState
    max_retries: int = 3
    scheduled_at: datetime | None = None
    params: dict[str, Any] = field(default_factory=dict)
    search_attributes: bool = True
    limits: RunLimits = field(default_factory=RunLimits)
    # The event the run's first write records: task.retried for a retry, else by what happens.
    retry_message: str | None = None
    # A bulk task's input file in storage ({"key", "name", "size", "contentType"}), if it has one,
    # and until when it may be uploaded.
    input_file: dict[str, Any] | None = None
    upload_expires_at: datetime | None = None
    # Where each final transition's webhook is POSTed (None: no webhook); read again at send time.
    callback_url: str | None = None


@dataclass(frozen=True, slots=True)
class MirrorWrite:
    """A full snapshot of the task's mutable state plus the event and log lines it causes.

    A run's write applies only if the run chain ``owner`` owns the row and ``seq`` is newer; the
    owner's first write (``claim_seq`` set) takes the row over only if its ``seq`` still equals
    ``claim_seq``. Retries and reordering never move a task backwards, and no other run's write
    lands in between.
    """

    task_id: str
    seq: int
    run_id: str
    status: str
    event_type: str
    message: str
    owner: str | None = None
    claim_seq: int | None = None
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
    retry_count: int = 0
    next_retry_at: datetime | None = None
    at: datetime | None = None
    # Stored files by role, merged into the row's ``files`` (None: unchanged).
    files: dict[str, Any] | None = None
    # The log lines to write, in order; empty means one line: ``message`` at ``level``.
    logs: list[LogLine] = field(default_factory=list)


class MirrorOutcome(StrEnum):
    """What became of a mirror write."""

    APPLIED = "applied"
    # Already applied by an earlier attempt of the same write (an activity retry).
    DUPLICATE = "duplicate"
    # Another run chain owns the task now, or the task was deleted: this run must stop writing.
    FENCED = "fenced"


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
    retry_count: int = 0
    started_at: datetime | None = None
    completed_at: datetime | None = None
    next_retry_at: datetime | None = None
    reports: int = 0
    runs: int = 1


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


@dataclass(slots=True)
class ReconcileReport:
    """What one reconciler pass did."""

    failed: int = 0
    cancelled: int = 0
    started: int = 0
    adopted: int = 0
    stuck: int = 0
    stuck_task_ids: list[str] = field(default_factory=list)
    closed_runs_seen: int = 0


@dataclass(frozen=True, slots=True)
class ReconcilePassInput:
    """The reconciler workflow's request for one pass: closed runs since ``since``."""

    since: datetime


@dataclass(frozen=True, slots=True)
class ReconcilePassResult:
    """One pass's report and the watermark the next pass starts from."""

    report: ReconcileReport
    next_since: datetime
    finished_at: datetime


@dataclass(slots=True)
class ReconcilerState:
    """The reconciler workflow's state, carried across continue-as-new."""

    interval_seconds: float
    since: datetime | None = None
    passes: int = 0
    last: ReconcilePassResult | None = None
    last_error: str | None = None


@dataclass(frozen=True, slots=True)
class AwaitUploadInput:
    """Wait for a task's input file to be completely uploaded."""

    task_id: str
    key: str
    expires_at: datetime
    max_size: int


@dataclass(frozen=True, slots=True)
class BulkJobInput:
    """What a built-in import or export activity needs; the data itself stays in storage and Postgres.

    ``owner`` and ``seq`` fence the activity's own progress writes: they apply only while the row
    is still at that sequence (no transition of the workflow came after), so a cancelled or
    superseded job can never overwrite the task's state.
    """

    task_id: str
    entity_type: str
    attempt: int
    owner: str
    seq: int
    params: dict[str, Any] = field(default_factory=dict)
    input_file: dict[str, Any] | None = None
    progress_interval_seconds: float = 1.0


@dataclass(frozen=True, slots=True)
class BulkJobResult:
    """Counts of a finished (or stopped) bulk job and the files it stored."""

    total_records: int = 0
    processed_records: int = 0
    success_records: int = 0
    failed_records: int = 0
    files: dict[str, Any] = field(default_factory=dict)
    message: str = ""
    # The job stopped because its cancellation was requested: the counts say what stays written.
    stopped: bool = False


@dataclass(frozen=True, slots=True)
class RetentionInput:
    """What the retention activity needs: its own task (never deleted) and how old is too old.

    ``days`` None means the worker's configured ``bulk.retention_days``.
    """

    task_id: str
    days: float | None = None
    batch: int = 500


def sink_batch_workflow_id(job_id: str, chunk_no: int, part: int) -> str:
    """The one batch workflow of part ``part`` of an import chunk (a chunk sent again reuses it)."""
    return f"sink-batch-{job_id}-{chunk_no}-{part}"


@dataclass(frozen=True, slots=True)
class SinkBatchInput:
    """One batch of an import into a ``temporal`` sink: whose activity takes it, and its rows.

    The owning service's activity (``activity`` on ``task_queue``) receives one argument, the
    ``http`` sink's body: ``{"entityType", "mode", "dryRun", "rows": [{"row": n, "data": {...}}]}``
    (a dict, or a dataclass of those fields), where ``data`` holds JSON values (decimals as
    strings, dates and datetimes in ISO 8601). It returns ``{"results": [{"row": n, "ok": bool,
    "code"?, "field"?, "message"?}]}`` with a result for every row (e.g. a :class:`SinkBatchOutput`).
    Raising fails the batch: it is retried, then the import's attempt fails with the message.
    """

    task_queue: str
    activity: str
    entity_type: str
    mode: str
    dry_run: bool
    rows: list[dict[str, Any]] = field(default_factory=list)
    timeout_seconds: float = 30.0


@dataclass(frozen=True, slots=True)
class SinkBatchRowResult:
    """The owner's verdict on one row; ``code``, ``field`` and ``message`` explain a refusal."""

    row: int
    ok: bool
    code: str | None = None
    field: str | None = None
    message: str | None = None


@dataclass(frozen=True, slots=True)
class SinkBatchOutput:
    """What the owner's activity returns: one result per row sent.

    The batch workflow passes the activity's answer on undecoded, so an owner may equally return
    a plain dict of this shape, and a malformed answer is reported by the import, not stuck in
    the workflow.
    """

    results: list[SinkBatchRowResult] = field(default_factory=list)
