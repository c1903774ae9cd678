"""Proto <-> domain conversions of the gRPC API; no rules beyond decoding live here."""

from __future__ import annotations

import math
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from google.protobuf import json_format, struct_pb2, timestamp_pb2

from common_operations.domain.errors import ValidationFailed
from common_operations.domain.json_text import json_text
from common_operations.domain.status import parse_status
from common_operations.domain.task import (
    CreateTask,
    Page,
    PageRequest,
    ProgressReport,
    Task,
    TaskEvent,
    TaskLog,
    TaskQuery,
    parse_params,
)
from common_operations.grpc.v1 import operations_pb2 as pb
from common_operations.infra.temporal_ui import workflow_url
from common_operations.services.tasks import DownloadUrl, HealthReport

# Struct numbers are doubles; beyond 2**53 a double cannot hold every integer, so leave those alone.
_MAX_EXACT_INT = 2**53


# -- scalars -------------------------------------------------------------------------------------


def timestamp(value: datetime | None) -> timestamp_pb2.Timestamp | None:
    """A Timestamp for ``value``; ``None`` stays unset."""
    if value is None:
        return None
    ts = timestamp_pb2.Timestamp()
    ts.FromDatetime(value if value.tzinfo else value.replace(tzinfo=UTC))
    return ts


def from_timestamp(ts: timestamp_pb2.Timestamp, name: str) -> datetime:
    """A time-zone aware (UTC) datetime.

    Args:
        ts: the Timestamp as received.
        name: the field's JSON name, for the error.

    Raises:
        ValidationFailed: seconds outside years 1 to 9999, or nanos outside a second. The wire can
            carry any int64/int32 values; protobuf refuses to convert them.
    """
    try:
        return ts.ToDatetime(tzinfo=UTC)
    except ValueError as exc:
        raise ValidationFailed(
            f"{name} is out of range (0001-01-01T00:00:00Z to 9999-12-31T23:59:59.999999999Z): {exc}",
            field=name,
        ) from exc


def _whole_numbers_as_int(value: Any) -> Any:
    # Struct carries every number as a double; JSON clients mean 3, not 3.0, so params and payloads
    # read the same through gRPC as through REST.
    if isinstance(value, float) and value.is_integer() and not math.isinf(value):
        return int(value) if abs(value) <= _MAX_EXACT_INT else value
    if isinstance(value, dict):
        return {k: _whole_numbers_as_int(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_whole_numbers_as_int(v) for v in value]
    return value


def struct_to_dict(value: struct_pb2.Struct) -> dict[str, Any]:
    """A Struct as plain JSON-like Python values (whole numbers as ``int``)."""
    decoded: dict[str, Any] = json_format.MessageToDict(value)
    return {k: _whole_numbers_as_int(v) for k, v in decoded.items()}


def dict_to_struct(value: dict[str, Any]) -> struct_pb2.Struct:
    """A JSON-like dict as a Struct."""
    result = struct_pb2.Struct()
    result.update(value)
    return result


def _optional_text(value: str) -> str | None:
    return value or None


# -- requests ------------------------------------------------------------------------------------


def create_task(request: pb.CreateTaskRequest) -> CreateTask:
    """The create command carried by ``request``; unset fields take the domain's defaults.

    Raises:
        ValidationFailed: ``params_object`` holds NaN or infinity, or ``params`` (``params_json``) is
            not a JSON object.
    """
    which = request.WhichOneof("params_input")
    if which == "params_object":
        try:
            params = struct_to_dict(request.params_object)
        except ValueError as exc:  # NaN or infinity: a Struct can hold them, JSON cannot
            raise ValidationFailed(f"paramsObject is not valid JSON: {exc}", field="paramsObject") from exc
    elif which == "params":
        params = parse_params(request.params)
    elif which == "params_json":
        params = parse_params(request.params_json)
    else:
        params = {}
    cmd = CreateTask(
        task_type=request.task_type,
        entity_type=request.entity_type,
        requested_by=request.requested_by,
        priority=request.priority,
        params=params,
        file_name=request.file_name if request.HasField("file_name") else None,
        file_size=request.file_size if request.HasField("file_size") else None,
        scheduled_at=from_timestamp(request.scheduled_at, "scheduledAt")
        if request.HasField("scheduled_at")
        else None,
        content_type=request.content_type if request.HasField("content_type") else None,
        callback_url=request.callback_url if request.HasField("callback_url") else None,
        idempotency_key=request.idempotency_key if request.HasField("idempotency_key") else None,
    )
    if request.HasField("max_retries"):
        cmd = replace(cmd, max_retries=request.max_retries)
    return cmd


def download_file(request: pb.GetDownloadUrlRequest) -> str:
    """Which of the task's files GetDownloadUrl asks for; unset means its output."""
    return request.file if request.HasField("file") else "output"


def task_query(request: pb.ListTasksRequest) -> TaskQuery:
    """The ListTasks filters; unset paging takes the domain's defaults.

    Raises:
        ValidationFailed: an unknown status.
    """
    query = TaskQuery(
        task_type=_optional_text(request.task_type),
        entity_type=_optional_text(request.entity_type),
        status=parse_status(request.status),
        requested_by=_optional_text(request.requested_by),
        start_date=from_timestamp(request.start_date, "startDate")
        if request.HasField("start_date")
        else None,
        end_date=from_timestamp(request.end_date, "endDate") if request.HasField("end_date") else None,
        search=_optional_text(request.search),
    )
    if request.HasField("page"):
        query = replace(query, page=request.page)
    if request.HasField("page_size"):
        query = replace(query, page_size=request.page_size)
    return query


def page_request(request: pb.GetTaskLogsRequest | pb.GetTaskEventsRequest) -> PageRequest:
    """Paging of logs and events; unset values take the domain's defaults."""
    page = PageRequest()
    if request.HasField("page"):
        page = replace(page, page=request.page)
    if request.HasField("page_size"):
        page = replace(page, page_size=request.page_size)
    return page


def progress_report(request: pb.UpdateTaskProgressRequest) -> ProgressReport:
    """The progress report; unset counts mean "unchanged"."""
    r = request
    return ProgressReport(
        processed_records=r.processed_records if r.HasField("processed_records") else None,
        success_records=r.success_records if r.HasField("success_records") else None,
        failed_records=r.failed_records if r.HasField("failed_records") else None,
        total_records=r.total_records if r.HasField("total_records") else None,
        error_message=r.error_message if r.HasField("error_message") else None,
        is_completed=r.is_completed,
        message=r.message if r.HasField("message") else None,
        report_id=r.report_id if r.HasField("report_id") else None,
        increment=r.increment,
    )


# -- responses -----------------------------------------------------------------------------------

# The roles GetDownloadUrl serves, in the order files_available lists them (as REST does).
_FILE_ROLES = ("output", "result", "input")


def task_to_proto(task: Task) -> pb.Task:
    """A domain task as the API's Task message."""
    return pb.Task(
        id=str(task.id),
        task_type=task.task_type,
        entity_type=task.entity_type,
        status=task.status.value,
        priority=task.priority,
        requested_by=task.requested_by,
        params=json_text(task.params),
        params_object=dict_to_struct(task.params),
        file_name=task.file_name,
        file_size=task.file_size,
        input_file_url=task.input_file_url,
        output_file_url=task.output_file_url,
        total_records=task.counts.total,
        processed_records=task.counts.processed,
        success_records=task.counts.success,
        failed_records=task.counts.failed,
        progress_percentage=task.progress_percentage,
        scheduled_at=timestamp(task.scheduled_at),
        started_at=timestamp(task.started_at),
        completed_at=timestamp(task.completed_at),
        error_message=task.error_message,
        retry_count=task.retry_count,
        max_retries=task.max_retries,
        created_at=timestamp(task.created_at),
        updated_at=timestamp(task.updated_at),
        next_retry_at=timestamp(task.next_retry_at),
        manifest=_optional_struct(task.manifest),
        source_task_id=str(task.source_task_id) if task.source_task_id else None,
        files_available=[role for role in _FILE_ROLES if isinstance(task.files.get(role), dict)],
        callback_url=task.callback_url,
        # Empty when no Temporal Web UI base URL is configured (proto3 string).
        workflow_url=workflow_url(task.id) or "",
    )


def _optional_struct(value: dict[str, Any] | None) -> struct_pb2.Struct | None:
    # Unset rather than an empty Struct, so the JSON mapping omits it where REST shows null.
    return None if value is None else dict_to_struct(value)


def created(task: Task) -> pb.CreateTaskResponse:
    """The created task and, for a task that stores its input, where (and until when) to upload it."""
    return pb.CreateTaskResponse(
        task=task_to_proto(task),
        upload_url=task.upload_url,
        upload_url_expires_at=timestamp(task.upload_url_expires_at),
    )


def task_page(page: Page[Task]) -> pb.ListTasksResponse:
    """A page of tasks with the total."""
    return pb.ListTasksResponse(
        tasks=[task_to_proto(t) for t in page.items],
        total=page.total,
        page=page.page,
        page_size=page.page_size,
    )


def log_page(page: Page[TaskLog]) -> pb.GetTaskLogsResponse:
    """A page of log lines with the total."""
    return pb.GetTaskLogsResponse(
        logs=[
            pb.TaskLog(
                id=log.id,
                task_id=str(log.task_id),
                seq=log.seq,
                level=log.level,
                message=log.message,
                created_at=timestamp(log.created_at),
                details=log.details,
            )
            for log in page.items
        ],
        total=page.total,
        page=page.page,
        page_size=page.page_size,
    )


def event_page(page: Page[TaskEvent]) -> pb.GetTaskEventsResponse:
    """A page of events with the total."""
    return pb.GetTaskEventsResponse(
        events=[
            pb.TaskEvent(
                id=event.id,
                task_id=str(event.task_id),
                seq=event.seq,
                event_type=event.event_type,
                status=event.status.value,
                payload=dict_to_struct(event.payload),
                created_at=timestamp(event.created_at),
                published_at=timestamp(event.published_at),
                event_data=json_text(event.payload),
            )
            for event in page.items
        ],
        total=page.total,
        page=page.page,
        page_size=page.page_size,
    )


def download_url(url: DownloadUrl) -> pb.GetDownloadUrlResponse:
    """Where the output can be downloaded."""
    return pb.GetDownloadUrlResponse(
        download_url=url.url, file_name=url.file_name, expires_at=timestamp(url.expires_at)
    )


def health(report: HealthReport) -> pb.HealthResponse:
    """The service's health with one entry per backing service."""
    return pb.HealthResponse(
        status="healthy" if report.healthy else "unhealthy", components=report.components
    )
