"""Request and response bodies of the REST API (lowerCamelCase JSON, seed field names of DESIGN.md §4).

Every body is the proto3 JSON mapping of the gRPC message of the same role
(protos/common_operations/grpc/v1/operations.proto), so the original service's clients
(../shared/notes/seed-contract.md) read the same names, types and shapes through either API;
tests/web/test_contract.py pins the keys.

These are transport types only: they decode JSON into Python types and nothing more. Ranges and
cross-field rules are checked by the domain and service layer, so REST and gRPC agree on them.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any

import msgspec

from common_operations.domain.status import TaskStatus

# The wire integer widths of the gRPC API (and of the Postgres columns): a JSON number outside them
# is not a value of the field's type, so it is refused while decoding, as protobuf would.
Int32 = Annotated[int, msgspec.Meta(ge=-(2**31), le=2**31 - 1)]
Int64 = Annotated[int, msgspec.Meta(ge=-(2**63), le=2**63 - 1)]


class Schema(msgspec.Struct, rename="camel", kw_only=True):
    """Base of every body: snake_case attributes, lowerCamelCase JSON."""


# --- requests -------------------------------------------------------------------------------------


class CreateTaskRequest(Schema):
    """Body of ``POST /api/v1/operations/tasks``.

    ``params`` is a string holding a JSON object (as seed clients send it) or the object itself;
    ``paramsObject`` (the gRPC field of that name) is the object only. Give one of them at most.
    Omitted ``requestedBy`` defaults to the caller; omitted ``maxRetries`` to the service default.
    """

    task_type: str
    entity_type: str = ""
    requested_by: str | None = None
    priority: Int32 = 0
    params: dict[str, Any] | str | None = None
    params_object: dict[str, Any] | None = None
    file_name: str | None = None
    file_size: Int64 | None = None
    scheduled_at: datetime | None = None
    max_retries: Int32 | None = None
    content_type: str | None = None
    callback_url: str | None = None


class UpdateProgressRequest(Schema):
    """Body of ``PATCH /api/v1/operations/tasks/{taskId}/progress``; an omitted count is unchanged.

    ``taskId`` may be repeated in the body (seed clients send it); it must then name the path's task.
    With ``increment`` the processed, success and failed counts are added to the task's instead of
    replacing them. ``reportId`` makes the report idempotent (at most 200 printable characters).
    """

    task_id: str | None = None
    processed_records: Int64 | None = None
    success_records: Int64 | None = None
    failed_records: Int64 | None = None
    total_records: Int64 | None = None
    error_message: str | None = None
    is_completed: bool = False
    message: str | None = None
    report_id: str | None = None
    increment: bool = False


class CancelTaskRequest(Schema):
    """Body of ``POST /api/v1/operations/tasks/{id}/cancel`` (optional).

    ``id`` repeats the path's task id (seed clients send it) and must then match it; ``reason`` (at
    most 1000 characters) is recorded in the task's event and log line and passed to Temporal.
    """

    id: str | None = None
    reason: str | None = None


class RetryTaskRequest(Schema):
    """Body of ``POST /api/v1/operations/tasks/{id}/retry`` (optional); ``id`` must match the path's."""

    id: str | None = None


# --- responses ------------------------------------------------------------------------------------


class TaskOut(Schema):
    """A task as clients see it."""

    id: uuid.UUID
    task_type: str
    entity_type: str
    status: TaskStatus
    priority: int
    requested_by: str
    # A JSON object encoded as a string, as the seed API has it; paramsObject is the same object.
    params: str
    params_object: dict[str, Any]
    file_name: str | None
    file_size: int | None
    input_file_url: str | None
    output_file_url: str | None
    total_records: int
    processed_records: int
    success_records: int
    failed_records: int
    progress_percentage: float
    scheduled_at: datetime | None
    started_at: datetime | None
    completed_at: datetime | None
    error_message: str | None
    retry_count: int
    max_retries: int
    created_at: datetime | None
    updated_at: datetime | None
    next_retry_at: datetime | None
    # Built-in export: row count, byte size and SHA-256 of the stored output (null otherwise).
    manifest: dict[str, Any] | None
    # Import of the failed rows of another import: that import's id.
    source_task_id: uuid.UUID | None
    # Which stored files GetDownloadUrl can serve for the task (``file=``): output, result, input.
    files_available: list[str]
    # Where the final state is POSTed, signed (null: no webhook).
    callback_url: str | None
    # The task's workflow in the Temporal Web UI (null: no temporal.ui_base_url configured).
    workflow_url: str | None


class TaskResponse(Schema):
    """One task, wrapped as the seed API does (``{"task": {...}}``)."""

    task: TaskOut


class CreateTaskResponse(Schema):
    """The created task and where to upload its input file.

    ``uploadUrl`` (an HTTP PUT of the file's bytes) and ``uploadUrlExpiresAt`` are set for a task
    created with a ``fileName`` that stores its input (built-in import); ``null`` otherwise. The task
    starts once the upload is complete, and fails if it is not there when the URL expires.
    """

    task: TaskOut
    upload_url: str | None
    upload_url_expires_at: datetime | None


class CancelTaskResponse(Schema):
    """The task once its cleanup ran (or the wait for it ended).

    ``success`` is always true in a 2xx answer (the seed's only field); a refusal is a problem.
    """

    success: bool
    task: TaskOut


class UpdateTaskProgressResponse(Schema):
    """The task after the report; ``success`` is always true in a 2xx answer (the seed's only field)."""

    success: bool
    task: TaskOut


class DeleteTaskResponse(Schema):
    """``{"success": true}``; a refused deletion is a problem."""

    success: bool


class TaskListResponse(Schema):
    """One page of tasks, newest first, and the total matching the filters."""

    tasks: list[TaskOut]
    total: int
    page: int
    page_size: int


class TaskLogOut(Schema):
    """One log line of a task; ``details`` is a JSON document encoded as a string, or null."""

    id: int
    task_id: uuid.UUID
    seq: int
    level: str
    message: str
    details: str | None
    created_at: datetime


class TaskLogsResponse(Schema):
    """One page of a task's log lines, oldest first."""

    logs: list[TaskLogOut]
    total: int
    page: int
    page_size: int


class TaskEventOut(Schema):
    """One event of a task's history; ``eventData`` is ``payload`` as compact JSON text (seed)."""

    id: int
    task_id: uuid.UUID
    seq: int
    event_type: str
    status: TaskStatus
    event_data: str
    payload: dict[str, Any]
    created_at: datetime
    published_at: datetime | None


class TaskEventsResponse(Schema):
    """One page of a task's events in sequence order."""

    events: list[TaskEventOut]
    total: int
    page: int
    page_size: int


class RetryFailedRowsRequest(Schema):
    """Body of ``POST …/tasks/{id}/retry-failed-rows`` (optional).

    Without ``fileName`` the new import takes the failed rows from the source's input as they were;
    with it, upload the corrected rows to the returned ``uploadUrl``. ``id``, if given, must match the
    path's (the gRPC request carries it; REST clients may repeat it, as for retry).
    """

    id: str | None = None
    file_name: str | None = None
    file_size: Int64 | None = None


class DownloadUrlResponse(Schema):
    """Where a task's output file can be fetched; ``expiresAt`` null: the URL does not expire."""

    download_url: str
    file_name: str | None
    expires_at: datetime | None


class HealthResponse(Schema):
    """Overall status (``healthy``/``unhealthy``) and the status of each backing service."""

    status: str
    components: dict[str, str]


class LiveResponse(Schema):
    """Liveness: the process answers."""

    status: str


class FieldError(Schema):
    """One offending input of a 400 problem."""

    field: str | None
    message: str


class ProblemDetails(Schema, omit_defaults=True):
    """RFC 9457 problem details, extended with a stable machine-readable ``code``.

    ``errors`` lists the offending fields of a 400; ``details`` carries the domain error's context
    (for example the allowed task types, or the current status of a refused transition).
    """

    type: str
    title: str
    status: int
    detail: str
    code: str
    instance: str | None = None
    errors: list[FieldError] | None = None
    details: dict[str, Any] | None = None
