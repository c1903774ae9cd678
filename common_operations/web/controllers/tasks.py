"""Task endpoints (``/api/v1/operations/...``): decode, call :class:`TaskService`, encode.

Operation ids are the gRPC RPC names and paths, path parameters and bodies are those of the original
service's gRPC-Gateway bindings (../shared/notes/seed-contract.md): ``{id}`` for the task's own
endpoints, ``{taskId}`` for its progress, download, logs and events.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime
from typing import Annotated, Any

from litestar import Controller, Response, delete, get, patch, post
from litestar.openapi import ResponseSpec
from litestar.openapi.spec import Operation, RequestBody
from litestar.params import FromPath, HeaderParameter, JSONBody, QueryParameter

from common_operations.domain.status import TaskStatus, parse_status
from common_operations.domain.task import (
    DEFAULT_PAGE_SIZE,
    PageRequest,
    TaskQuery,
    parse_cancel_reason,
    parse_task_id,
)
from common_operations.web import mapping
from common_operations.web.dependencies import PUBLIC, Call
from common_operations.web.errors import problem_responses
from common_operations.web.schemas import (
    CancelTaskRequest,
    CancelTaskResponse,
    CreateTaskRequest,
    CreateTaskResponse,
    DeleteTaskResponse,
    DownloadUrlResponse,
    HealthResponse,
    RetryFailedRowsRequest,
    RetryTaskRequest,
    TaskEventsResponse,
    TaskListResponse,
    TaskLogsResponse,
    TaskResponse,
    UpdateProgressRequest,
    UpdateTaskProgressResponse,
)

# The seed's path parameter names: {id} where the RPC's request field is id, {taskId} where it is
# task_id. The handlers' argument names must equal them.
TASK = "/tasks/{id:str}"
TASK_OF = "/tasks/{taskId:str}"
HISTORY_PAGE_SIZE = PageRequest().page_size
# Decoded by the domain (as gRPC does), so both APIs accept and reject the same spellings.
STATUS_DOC = "task status: " + ", ".join(s.value for s in TaskStatus)
STATUS_ENUM: dict[str, Any] = {"enum": [s.value for s in TaskStatus]}


@dataclass
class OptionalBodyOperation(Operation):
    """An operation whose JSON body may be left out (Litestar documents every body as required)."""

    def __post_init__(self) -> None:
        """Mark the request body optional."""
        if isinstance(self.request_body, RequestBody):
            self.request_body.required = False


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
        status_code=201,
        responses={
            200: ResponseSpec(
                CreateTaskResponse,
                description="The task an earlier request with the same Idempotency-Key and body created",
            ),
            **problem_responses(400, 401, 403, 409, 413, 429, 503),
        },
    )
    async def create_task(
        self,
        data: JSONBody[CreateTaskRequest],
        call: Call,
        idempotency_key: Annotated[
            str | None,
            HeaderParameter(
                name="Idempotency-Key",
                required=False,
                description="At most 255 printable ASCII characters, unique per caller and request. "
                "The same key with the same body answers the first request's task (200, no second "
                "task); with a different body, 409 IDEMPOTENCY_KEY_REUSED. Kept as long as the task.",
            ),
        ] = None,
    ) -> Response[CreateTaskResponse]:
        """Record a task; ``requestedBy`` defaults to the caller, a future ``scheduledAt`` schedules it.

        ``params`` is a string holding a JSON object, as in the original API (the object itself, or
        ``paramsObject``, is accepted too). It is at most 64 KiB as compact UTF-8 JSON (413
        ``PAYLOAD_TOO_LARGE`` beyond) and at most 32 levels deep, the params object itself being level 1
        (400 beyond). ``uploadUrl`` is null until the file-storage feature exists.
        """
        cmd = replace(mapping.create_command(data), idempotency_key=idempotency_key)
        result = await call.tasks.create(call.principal, cmd)
        return Response(mapping.created_response(result.task), status_code=201 if result.created else 200)

    @get(
        "/tasks",
        operation_id="ListTasks",
        summary="List tasks, newest first",
        responses=problem_responses(400, 401, 403, 429),
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

    @get(
        TASK,
        operation_id="GetTask",
        summary="Get a task",
        responses=problem_responses(400, 401, 403, 404, 429),
    )
    async def get_task(self, id: FromPath[str], call: Call) -> TaskResponse:
        """One task by id."""
        return mapping.task_response(await call.tasks.get_task(call.principal, parse_task_id(id)))

    @delete(
        TASK,
        operation_id="DeleteTask",
        summary="Delete a finished task with its logs and events",
        status_code=200,
        responses=problem_responses(400, 401, 403, 404, 409, 429),
    )
    async def delete_task(self, id: FromPath[str], call: Call) -> DeleteTaskResponse:
        """Only completed, failed or cancelled tasks can be deleted; answers ``{"success": true}``."""
        await call.tasks.delete_task(call.principal, parse_task_id(id))
        return mapping.deleted_response()

    @post(
        TASK + "/cancel",
        operation_id="CancelTask",
        summary="Cancel a scheduled, pending or processing task",
        status_code=200,
        operation_class=OptionalBodyOperation,
        responses=problem_responses(400, 401, 403, 404, 409, 413, 429, 503),
    )
    async def cancel_task(
        self, id: FromPath[str], call: Call, data: JSONBody[CancelTaskRequest | None] = None
    ) -> CancelTaskResponse:
        """Cancel through the workflow; answers the task once its cleanup ran (or the wait ended).

        The body is optional: ``{"id": ..., "reason": ...}``, where ``id`` (if given) must be the
        path's and ``reason`` (at most 1000 characters) is recorded with the cancellation.
        """
        body = data or CancelTaskRequest()
        task_id = mapping.task_id(id, body.id, "id")
        task = await call.tasks.cancel_task(call.principal, task_id, parse_cancel_reason(body.reason))
        return mapping.cancelled_response(task)

    @post(
        TASK + "/retry",
        operation_id="RetryTask",
        summary="Start a new run of a failed task",
        status_code=200,
        operation_class=OptionalBodyOperation,
        responses=problem_responses(400, 401, 403, 404, 409, 413, 429, 503),
    )
    async def retry_task(
        self, id: FromPath[str], call: Call, data: JSONBody[RetryTaskRequest | None] = None
    ) -> TaskResponse:
        """Allowed from ``failed`` while ``retryCount < maxRetries``; the body ``{"id": ...}`` is optional."""
        task_id = mapping.task_id(id, data.id if data else None, "id")
        return mapping.task_response(await call.tasks.retry_task(call.principal, task_id))

    @patch(
        TASK_OF + "/progress",
        operation_id="UpdateTaskProgress",
        summary="Report progress of an externally processed task",
        responses=problem_responses(400, 401, 403, 404, 409, 413, 429, 503),
    )
    async def update_progress(
        self,
        taskId: FromPath[str],  # noqa: N803 - the seed's path parameter name
        data: JSONBody[UpdateProgressRequest],
        call: Call,
    ) -> UpdateTaskProgressResponse:
        """Omitted counts stay unchanged; ``isCompleted`` ends the task (failed if ``errorMessage``).

        ``increment`` adds the processed, success and failed counts to the task's; a ``reportId``
        already applied is not applied again.
        """
        task_id = mapping.task_id(taskId, data.task_id, "taskId")
        report = mapping.progress_report(data)
        return mapping.progress_response(await call.tasks.update_progress(call.principal, task_id, report))

    @get(
        TASK_OF + "/download",
        operation_id="GetDownloadUrl",
        summary="Where the task's output file can be downloaded",
        responses=problem_responses(400, 401, 403, 404, 409, 429),
    )
    async def download_url(
        self,
        taskId: FromPath[str],  # noqa: N803 - the seed's path parameter name
        call: Call,
        file: Annotated[
            str,
            QueryParameter(
                description="which file: output (default), result (an import's row results) or input"
            ),
        ] = "output",
    ) -> DownloadUrlResponse:
        """409 ``NOT_AVAILABLE`` while the task has no such file; ``expiresAt`` null: no expiry."""
        task_id = parse_task_id(taskId)
        return mapping.download_response(await call.tasks.download_url(call.principal, task_id, file))

    @post(
        TASK + "/retry-failed-rows",
        operation_id="RetryFailedRows",
        summary="Import again only the rows a finished import rejected (a new task)",
        status_code=201,
        operation_class=OptionalBodyOperation,
        responses=problem_responses(400, 401, 403, 404, 409, 413, 429, 503),
    )
    async def retry_failed_rows(
        self, id: FromPath[str], call: Call, data: JSONBody[RetryFailedRowsRequest | None] = None
    ) -> CreateTaskResponse:
        """The new task (``sourceTaskId`` names this one); with ``fileName``, its ``uploadUrl``."""
        task = await call.tasks.retry_failed_rows(
            call.principal,
            mapping.task_id(id, data.id if data else None, "id"),
            file_name=data.file_name if data else None,
            file_size=data.file_size if data else None,
        )
        return mapping.created_response(task)

    @get(
        TASK_OF + "/logs",
        operation_id="GetTaskLogs",
        summary="The task's log lines, oldest first",
        responses=problem_responses(400, 401, 403, 404, 429),
    )
    async def task_logs(
        self,
        taskId: FromPath[str],  # noqa: N803 - the seed's path parameter name
        call: Call,
        page: Page = 1,
        page_size: PageSize = HISTORY_PAGE_SIZE,
    ) -> TaskLogsResponse:
        """One page of log lines; ``details`` is a JSON document encoded as a string, or null."""
        paging = PageRequest(page=page, page_size=page_size)
        return mapping.log_list(await call.tasks.task_logs(call.principal, parse_task_id(taskId), paging))

    @get(
        TASK_OF + "/events",
        operation_id="GetTaskEvents",
        summary="The task's events in sequence order",
        responses=problem_responses(400, 401, 403, 404, 429),
    )
    async def task_events(
        self,
        taskId: FromPath[str],  # noqa: N803 - the seed's path parameter name
        call: Call,
        page: Page = 1,
        page_size: PageSize = HISTORY_PAGE_SIZE,
    ) -> TaskEventsResponse:
        """One page of events (task.created, task.started, …); ``eventData`` is the payload as JSON text."""
        paging = PageRequest(page=page, page_size=page_size)
        return mapping.event_list(await call.tasks.task_events(call.principal, parse_task_id(taskId), paging))

    @get(
        "/health",
        operation_id="Health",
        summary="Health of the service and its backing services",
        responses={503: ResponseSpec(HealthResponse, description="A backing service is down")},
        opt=PUBLIC,
    )
    async def health(self, call: Call) -> Response[HealthResponse]:
        """200 when Postgres and Temporal answer, else 503 with the same body."""
        report = await call.tasks.health()
        return Response(mapping.health_response(report), status_code=200 if report.healthy else 503)
