"""Task endpoints (``/api/v1/operations/...``): decode, call :class:`TaskService`, encode.

Operation ids are the gRPC RPC names, so both APIs read the same in generated clients.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from litestar import Controller, Response, delete, get, patch, post
from litestar.openapi import ResponseSpec
from litestar.params import FromPath, JSONBody, QueryParameter

from common_operations.domain.status import TaskStatus, parse_status
from common_operations.domain.task import DEFAULT_PAGE_SIZE, PageRequest, TaskQuery, parse_task_id
from common_operations.web import mapping
from common_operations.web.dependencies import Call
from common_operations.web.errors import problem_responses
from common_operations.web.schemas import (
    CreateTaskRequest,
    DownloadUrlResponse,
    HealthResponse,
    TaskEventsResponse,
    TaskListResponse,
    TaskLogsResponse,
    TaskResponse,
    UpdateProgressRequest,
)

TASK = "/tasks/{task_id:str}"
HISTORY_PAGE_SIZE = PageRequest().page_size
# Decoded by the domain (as gRPC does), so both APIs accept and reject the same spellings.
STATUS_DOC = "task status: " + ", ".join(s.value for s in TaskStatus)
STATUS_ENUM: dict[str, Any] = {"enum": [s.value for s in TaskStatus]}

Page = Annotated[int, QueryParameter(description="1-based page number")]
PageSize = Annotated[int, QueryParameter(name="pageSize", description="rows per page (at most 1000)")]


class TaskController(Controller):
    """The task RPCs of DESIGN.md §6 over HTTP (operation ids are the RPC names)."""

    path = "/api/v1/operations"
    tags = ["Tasks"]  # noqa: RUF012 - Litestar reads this class attribute as is

    @post(
        "/tasks",
        operation_id="CreateTask",
        summary="Create a task and start its workflow",
        responses=problem_responses(400, 413, 429, 503),
    )
    async def create_task(self, data: JSONBody[CreateTaskRequest], call: Call) -> TaskResponse:
        """Record a task; ``requestedBy`` defaults to the caller, a future ``scheduledAt`` schedules it.

        ``params`` is at most 64 KiB as compact UTF-8 JSON (413 ``PAYLOAD_TOO_LARGE`` beyond) and at most
        32 levels deep, the params object itself being level 1 (400 beyond).
        """
        return mapping.task_response(
            await call.tasks.create_task(call.principal, mapping.create_command(data))
        )

    @get(
        "/tasks",
        operation_id="ListTasks",
        summary="List tasks, newest first",
        responses=problem_responses(400),
    )
    async def list_tasks(
        self,
        call: Call,
        page: Page = 1,
        page_size: PageSize = DEFAULT_PAGE_SIZE,
        task_type: Annotated[str | None, QueryParameter(name="taskType")] = None,
        entity_type: Annotated[str | None, QueryParameter(name="entityType")] = None,
        status: Annotated[
            str | None, QueryParameter(description=STATUS_DOC, schema_extra=STATUS_ENUM)
        ] = None,
        requested_by: Annotated[str | None, QueryParameter(name="requestedBy")] = None,
        start_date: Annotated[
            datetime | None, QueryParameter(name="startDate", description="RFC 3339; created at or after")
        ] = None,
        end_date: Annotated[
            datetime | None, QueryParameter(name="endDate", description="RFC 3339; created at or before")
        ] = None,
        search: Annotated[
            str | None, QueryParameter(description="substring of the id, file name or error message")
        ] = None,
    ) -> TaskListResponse:
        """Filter by type, entity, status, requester and creation time; search; page."""
        query = TaskQuery(
            page=page,
            page_size=page_size,
            task_type=task_type,
            entity_type=entity_type,
            status=parse_status(status),
            requested_by=requested_by,
            start_date=start_date,
            end_date=end_date,
            search=search,
        )
        return mapping.task_list(await call.tasks.list_tasks(call.principal, query))

    @get(TASK, operation_id="GetTask", summary="Get a task", responses=problem_responses(400, 404))
    async def get_task(self, task_id: FromPath[str], call: Call) -> TaskResponse:
        """One task by id."""
        return mapping.task_response(await call.tasks.get_task(call.principal, parse_task_id(task_id)))

    @delete(
        TASK,
        operation_id="DeleteTask",
        summary="Delete a finished task with its logs and events",
        responses=problem_responses(400, 404, 409),
    )
    async def delete_task(self, task_id: FromPath[str], call: Call) -> None:
        """Only completed, failed or cancelled tasks can be deleted."""
        await call.tasks.delete_task(call.principal, parse_task_id(task_id))

    @post(
        TASK + "/cancel",
        operation_id="CancelTask",
        summary="Cancel a scheduled, pending or processing task",
        status_code=200,
        responses=problem_responses(400, 404, 409, 413, 429, 503),
    )
    async def cancel_task(self, task_id: FromPath[str], call: Call) -> TaskResponse:
        """Cancel through the workflow; answers the task once its cleanup ran (or the wait ended)."""
        return mapping.task_response(await call.tasks.cancel_task(call.principal, parse_task_id(task_id)))

    @post(
        TASK + "/retry",
        operation_id="RetryTask",
        summary="Start a new run of a failed task",
        status_code=200,
        responses=problem_responses(400, 404, 409, 413, 429, 503),
    )
    async def retry_task(self, task_id: FromPath[str], call: Call) -> TaskResponse:
        """Allowed from ``failed`` while ``retryCount < maxRetries``."""
        return mapping.task_response(await call.tasks.retry_task(call.principal, parse_task_id(task_id)))

    @patch(
        TASK + "/progress",
        operation_id="UpdateTaskProgress",
        summary="Report progress of an externally processed task",
        responses=problem_responses(400, 404, 409, 413, 429, 503),
    )
    async def update_progress(
        self, task_id: FromPath[str], data: JSONBody[UpdateProgressRequest], call: Call
    ) -> TaskResponse:
        """Omitted counts stay unchanged; ``isCompleted`` ends the task (failed if ``errorMessage``)."""
        report = mapping.progress_report(data)
        return mapping.task_response(
            await call.tasks.update_progress(call.principal, parse_task_id(task_id), report)
        )

    @get(
        TASK + "/download",
        operation_id="GetDownloadUrl",
        summary="Where the task's output file can be downloaded",
        responses=problem_responses(400, 404, 409),
    )
    async def download_url(self, task_id: FromPath[str], call: Call) -> DownloadUrlResponse:
        """409 ``NOT_AVAILABLE`` while the task has no output file."""
        return mapping.download_response(
            await call.tasks.download_url(call.principal, parse_task_id(task_id))
        )

    @get(
        TASK + "/logs",
        operation_id="GetTaskLogs",
        summary="The task's log lines, oldest first",
        responses=problem_responses(400, 404),
    )
    async def task_logs(
        self,
        task_id: FromPath[str],
        call: Call,
        page: Page = 1,
        page_size: PageSize = HISTORY_PAGE_SIZE,
    ) -> TaskLogsResponse:
        """One page of log lines."""
        paging = PageRequest(page=page, page_size=page_size)
        return mapping.log_list(await call.tasks.task_logs(call.principal, parse_task_id(task_id), paging))

    @get(
        TASK + "/events",
        operation_id="GetTaskEvents",
        summary="The task's events in sequence order",
        responses=problem_responses(400, 404),
    )
    async def task_events(
        self,
        task_id: FromPath[str],
        call: Call,
        page: Page = 1,
        page_size: PageSize = HISTORY_PAGE_SIZE,
    ) -> TaskEventsResponse:
        """One page of events (task.created, task.started, task.progress, …)."""
        paging = PageRequest(page=page, page_size=page_size)
        return mapping.event_list(
            await call.tasks.task_events(call.principal, parse_task_id(task_id), paging)
        )

    @get(
        "/health",
        operation_id="Health",
        summary="Health of the service and its backing services",
        responses={503: ResponseSpec(HealthResponse, description="A backing service is down")},
    )
    async def health(self, call: Call) -> Response[HealthResponse]:
        """200 when Postgres and Temporal answer, else 503 with the same body."""
        report = await call.tasks.health()
        return Response(mapping.health_response(report), status_code=200 if report.healthy else 503)
