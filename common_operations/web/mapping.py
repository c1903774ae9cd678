"""The one place where REST schemas and domain objects are converted into each other."""

from __future__ import annotations

import uuid

from common_operations.domain.errors import ValidationFailed
from common_operations.domain.json_text import json_text
from common_operations.domain.task import (
    CreateTask,
    Page,
    ProgressReport,
    Task,
    TaskEvent,
    TaskLog,
    parse_params,
    parse_task_id,
)
from common_operations.infra.temporal_ui import workflow_url
from common_operations.services.tasks import DownloadUrl, HealthReport
from common_operations.web.schemas import (
    CancelTaskResponse,
    CreateTaskRequest,
    CreateTaskResponse,
    DeleteTaskResponse,
    DownloadUrlResponse,
    HealthResponse,
    TaskEventOut,
    TaskEventsResponse,
    TaskListResponse,
    TaskLogOut,
    TaskLogsResponse,
    TaskOut,
    TaskResponse,
    UpdateProgressRequest,
    UpdateTaskProgressResponse,
)


def task_id(path: str, body: str | None, name: str) -> uuid.UUID:
    """The task id of the path, which an id repeated in the body (``name``) must equal.

    Seed clients send the id in the body as well as in the path (gRPC-Gateway's ``body: "*"``).

    Raises:
        ValidationFailed: either is not a UUID, or they name different tasks.
    """
    parsed = parse_task_id(path)
    if body is not None and parse_task_id(body) != parsed:
        raise ValidationFailed(f"{name} {body!r} in the body differs from the path's {path!r}", field=name)
    return parsed


def create_command(body: CreateTaskRequest) -> CreateTask:
    """The domain command of a create request.

    Raises:
        ValidationFailed: ``params`` is a string that is not a JSON object, or both ``params`` and
            ``paramsObject`` are given (they are one oneof in gRPC).
    """
    if body.params is not None and body.params_object is not None:
        raise ValidationFailed("give params or paramsObject, not both", field="paramsObject")
    return CreateTask(
        task_type=body.task_type,
        entity_type=body.entity_type,
        # Empty lets the service default it to the caller.
        requested_by=body.requested_by or "",
        priority=body.priority,
        params=parse_params(body.params if body.params_object is None else body.params_object),
        file_name=body.file_name,
        file_size=body.file_size,
        scheduled_at=body.scheduled_at,
        max_retries=body.max_retries,  # None: the service's configured default
        content_type=body.content_type,
        callback_url=body.callback_url,
    )


def progress_report(body: UpdateProgressRequest) -> ProgressReport:
    """The domain report of a progress request."""
    return ProgressReport(
        processed_records=body.processed_records,
        success_records=body.success_records,
        failed_records=body.failed_records,
        total_records=body.total_records,
        error_message=body.error_message,
        is_completed=body.is_completed,
        message=body.message,
        report_id=body.report_id,
        increment=body.increment,
    )


def task_out(task: Task) -> TaskOut:
    """A task as the API shows it."""
    return TaskOut(
        id=task.id,
        task_type=task.task_type,
        entity_type=task.entity_type,
        status=task.status,
        priority=task.priority,
        requested_by=task.requested_by,
        params=json_text(task.params),
        params_object=task.params,
        file_name=task.file_name,
        file_size=task.file_size,
        input_file_url=task.input_file_url,
        output_file_url=task.output_file_url,
        total_records=task.counts.total,
        processed_records=task.counts.processed,
        success_records=task.counts.success,
        failed_records=task.counts.failed,
        progress_percentage=task.progress_percentage,
        scheduled_at=task.scheduled_at,
        started_at=task.started_at,
        completed_at=task.completed_at,
        error_message=task.error_message,
        retry_count=task.retry_count,
        max_retries=task.max_retries,
        created_at=task.created_at,
        updated_at=task.updated_at,
        next_retry_at=task.next_retry_at,
        manifest=task.manifest,
        source_task_id=task.source_task_id,
        files_available=[k for k in ("output", "result", "input") if isinstance(task.files.get(k), dict)],
        callback_url=task.callback_url,
        workflow_url=workflow_url(task.id),
    )


def task_response(task: Task) -> TaskResponse:
    """``{"task": {...}}``."""
    return TaskResponse(task=task_out(task))


def created_response(task: Task) -> CreateTaskResponse:
    """The created task and, for a task that stores its input, where to upload it."""
    return CreateTaskResponse(
        task=task_out(task), upload_url=task.upload_url, upload_url_expires_at=task.upload_url_expires_at
    )


def cancelled_response(task: Task) -> CancelTaskResponse:
    """``{"success": true, "task": {...}}``."""
    return CancelTaskResponse(success=True, task=task_out(task))


def progress_response(task: Task) -> UpdateTaskProgressResponse:
    """``{"success": true, "task": {...}}``."""
    return UpdateTaskProgressResponse(success=True, task=task_out(task))


def deleted_response() -> DeleteTaskResponse:
    """``{"success": true}``."""
    return DeleteTaskResponse(success=True)


def task_list(page: Page[Task]) -> TaskListResponse:
    """A page of tasks."""
    return TaskListResponse(
        tasks=[task_out(t) for t in page.items], total=page.total, page=page.page, page_size=page.page_size
    )


def log_list(page: Page[TaskLog]) -> TaskLogsResponse:
    """A page of log lines."""
    return TaskLogsResponse(
        logs=[
            TaskLogOut(
                id=log.id,
                task_id=log.task_id,
                seq=log.seq,
                level=log.level,
                message=log.message,
                details=log.details,
                created_at=log.created_at,
            )
            for log in page.items
        ],
        total=page.total,
        page=page.page,
        page_size=page.page_size,
    )


def event_list(page: Page[TaskEvent]) -> TaskEventsResponse:
    """A page of events."""
    return TaskEventsResponse(
        events=[
            TaskEventOut(
                id=event.id,
                task_id=event.task_id,
                seq=event.seq,
                event_type=event.event_type,
                status=event.status,
                event_data=json_text(event.payload),
                payload=event.payload,
                created_at=event.created_at,
                published_at=event.published_at,
            )
            for event in page.items
        ],
        total=page.total,
        page=page.page,
        page_size=page.page_size,
    )


def download_response(download: DownloadUrl) -> DownloadUrlResponse:
    """Where the output can be fetched."""
    return DownloadUrlResponse(
        download_url=download.url, file_name=download.file_name, expires_at=download.expires_at
    )


def health_response(report: HealthReport, *, show_degraded: bool = False) -> HealthResponse:
    """``healthy``/``unhealthy`` (as gRPC's Health) and each component's state.

    Args:
        report: the service layer's health report.
        show_degraded: say ``degraded`` when the required services are up but an optional one
            (Redis) is down; the seed-compatible endpoints keep the two-valued status.
    """
    if not report.healthy:
        status = "unhealthy"
    elif show_degraded and report.degraded:
        status = "degraded"
    else:
        status = "healthy"
    return HealthResponse(status=status, components=report.components)
