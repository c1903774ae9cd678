"""``api.operations.v1.OperationsService``: decode, call :class:`TaskService`, encode.

Every rule lives in the service layer and the domain; errors are translated by
:func:`~common_operations.grpc.errors.grpc_errors`.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator

from typing_extensions import override

from common_operations.domain.errors import ServiceUnavailable
from common_operations.domain.principal import Principal
from common_operations.domain.task import parse_cancel_reason, parse_task_id
from common_operations.grpc import mapping
from common_operations.grpc.errors import Context, grpc_errors, grpc_stream_errors
from common_operations.grpc.v1 import operations_pb2 as pb
from common_operations.grpc.v1 import operations_pb2_grpc as pb_grpc
from common_operations.services.identity import Authenticator
from common_operations.services.tasks import TaskService
from common_operations.services.watch import TaskWatcher, parse_after_seq


def peer_subject(context: Context) -> str | None:
    """The common name of the client certificate gRPC verified (mTLS), if there was one."""
    names = list((context.auth_context() or {}).get("x509_common_name") or ())
    return names[0].decode("utf-8", "replace") if names else None


async def caller(auth: Authenticator, context: Context, *, public: bool = False) -> Principal:
    """The principal the call's credentials prove (gRPC metadata keys are already lower-case)."""
    metadata = context.invocation_metadata() or ()
    # Binary (``-bin``) entries carry bytes and can never carry a credential.
    headers = {key: value for key, value in metadata if isinstance(value, str)}
    return await auth.authenticate(headers, peer_subject=peer_subject(context), public=public)


class OperationsServicer(pb_grpc.OperationsServiceServicer):
    """The gRPC face of :class:`TaskService`."""

    def __init__(
        self, tasks: TaskService, auth: Authenticator, *, watcher: TaskWatcher | None = None
    ) -> None:
        """Serve the use cases of ``tasks`` to the callers ``auth`` verifies.

        Args:
            tasks: the task use cases.
            auth: verifies callers.
            watcher: live task snapshots for WatchTask (None: WatchTask answers UNAVAILABLE).
        """
        self._tasks = tasks
        self._auth = auth
        self._watcher = watcher

    @override
    @grpc_errors
    async def CreateTask(self, request: pb.CreateTaskRequest, context: Context) -> pb.CreateTaskResponse:
        """Record a task and start its workflow."""
        result = await self._tasks.create(await caller(self._auth, context), mapping.create_task(request))
        return mapping.created(result.task)

    @override
    @grpc_errors
    async def GetTask(self, request: pb.GetTaskRequest, context: Context) -> pb.GetTaskResponse:
        """One task by id."""
        task = await self._tasks.get_task(await caller(self._auth, context), parse_task_id(request.id))
        return pb.GetTaskResponse(task=mapping.task_to_proto(task))

    @override
    @grpc_errors
    async def ListTasks(self, request: pb.ListTasksRequest, context: Context) -> pb.ListTasksResponse:
        """Tasks matching the filters, newest first."""
        page = await self._tasks.list_tasks(await caller(self._auth, context), mapping.task_query(request))
        return mapping.task_page(page)

    @override
    @grpc_errors
    async def CancelTask(self, request: pb.CancelTaskRequest, context: Context) -> pb.CancelTaskResponse:
        """Cancel a scheduled, pending or processing task, for ``reason`` if given."""
        task = await self._tasks.cancel_task(
            await caller(self._auth, context), parse_task_id(request.id), parse_cancel_reason(request.reason)
        )
        return pb.CancelTaskResponse(task=mapping.task_to_proto(task), success=True)

    @override
    @grpc_errors
    async def RetryTask(self, request: pb.RetryTaskRequest, context: Context) -> pb.RetryTaskResponse:
        """Start a new run of a failed task."""
        task = await self._tasks.retry_task(await caller(self._auth, context), parse_task_id(request.id))
        return pb.RetryTaskResponse(task=mapping.task_to_proto(task))

    @override
    @grpc_errors
    async def UpdateTaskProgress(
        self, request: pb.UpdateTaskProgressRequest, context: Context
    ) -> pb.UpdateTaskProgressResponse:
        """Apply an external worker's progress report."""
        task = await self._tasks.update_progress(
            await caller(self._auth, context),
            parse_task_id(request.task_id),
            mapping.progress_report(request),
        )
        return pb.UpdateTaskProgressResponse(task=mapping.task_to_proto(task), success=True)

    @override
    @grpc_errors
    async def GetDownloadUrl(
        self, request: pb.GetDownloadUrlRequest, context: Context
    ) -> pb.GetDownloadUrlResponse:
        """Where the task's output file (or its row-level result, or its input) can be downloaded."""
        url = await self._tasks.download_url(
            await caller(self._auth, context), parse_task_id(request.task_id), mapping.download_file(request)
        )
        return mapping.download_url(url)

    @override
    @grpc_errors
    async def GetTaskLogs(self, request: pb.GetTaskLogsRequest, context: Context) -> pb.GetTaskLogsResponse:
        """A page of the task's log lines, oldest first."""
        page = await self._tasks.task_logs(
            await caller(self._auth, context), parse_task_id(request.task_id), mapping.page_request(request)
        )
        return mapping.log_page(page)

    @override
    @grpc_errors
    async def GetTaskEvents(
        self, request: pb.GetTaskEventsRequest, context: Context
    ) -> pb.GetTaskEventsResponse:
        """A page of the task's events in sequence order."""
        page = await self._tasks.task_events(
            await caller(self._auth, context), parse_task_id(request.task_id), mapping.page_request(request)
        )
        return mapping.event_page(page)

    @override
    @grpc_errors
    async def DeleteTask(self, request: pb.DeleteTaskRequest, context: Context) -> pb.DeleteTaskResponse:
        """Delete a completed, failed or cancelled task."""
        await self._tasks.delete_task(await caller(self._auth, context), parse_task_id(request.id))
        return pb.DeleteTaskResponse(success=True)

    @override
    @grpc_errors
    async def RetryFailedRows(
        self, request: pb.RetryFailedRowsRequest, context: Context
    ) -> pb.CreateTaskResponse:
        """A new import of only the rows a finished import rejected; with file_name, its upload URL."""
        task = await self._tasks.retry_failed_rows(
            await caller(self._auth, context),
            parse_task_id(request.id),
            file_name=request.file_name if request.HasField("file_name") else None,
            file_size=request.file_size if request.HasField("file_size") else None,
        )
        return mapping.created(task)

    @override
    @grpc_errors
    async def Health(self, request: pb.HealthRequest, context: Context) -> pb.HealthResponse:
        """Reachability of the backing services (public, like REST's /health)."""
        await caller(self._auth, context, public=True)
        return mapping.health(await self._tasks.health())

    @override
    @grpc_stream_errors
    async def WatchTask(
        self, request: pb.WatchTaskRequest, context: Context
    ) -> AsyncGenerator[pb.WatchTaskResponse, None]:
        """The task's snapshot now, then on every change (coalesced), ending with ``final``.

        A task the caller may not see is NOT_FOUND before any message; one deleted while watched
        ends the stream NOT_FOUND; a server shutting down ends it UNAVAILABLE (call again with
        ``after_seq``, the last ``seq`` received).
        """
        if self._watcher is None:
            raise ServiceUnavailable("live task streams are not available in this process")
        after = parse_after_seq(
            request.after_seq if request.HasField("after_seq") else None, field="afterSeq"
        )
        stream = await self._watcher.watch(
            self._tasks, await caller(self._auth, context), parse_task_id(request.id), after_seq=after
        )
        async with contextlib.aclosing(stream):
            async for update in stream:
                # Keep-alives are for SSE (proxies drop quiet HTTP/1 responses); HTTP/2 has pings.
                if update is not None:
                    yield pb.WatchTaskResponse(
                        task=mapping.task_to_proto(update.task), seq=update.seq, final=update.final
                    )
