"""``GET /api/v1/operations/tasks/{id}/stream``: a task's snapshots as Server-Sent Events.

Thin: :class:`~common_operations.services.watch.TaskWatcher` decides what is sent and when; this
module only frames it. Each message is ``id: <seq>``, ``event: task`` (or ``end`` for the final
one, after which the stream closes) and ``data:`` the task exactly as ``GET /tasks/{id}`` shows it
in its ``task`` member; ``: keep-alive`` comments keep quiet connections (and proxies) open.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator
from typing import Annotated, Any

from litestar import Controller, Request, get
from litestar.openapi import ResponseSpec
from litestar.params import FromPath, HeaderParameter, QueryParameter
from litestar.response import ServerSentEvent, ServerSentEventMessage
from litestar.serialization import encode_json

from common_operations.domain.errors import ServiceUnavailable, TaskNotFound
from common_operations.domain.task import parse_task_id
from common_operations.services.watch import TaskUpdate, TaskWatcher, parse_after_seq
from common_operations.web import mapping
from common_operations.web.dependencies import Call
from common_operations.web.errors import problem_responses
from common_operations.web.schemas import TaskOut

EVENT_TASK = "task"
EVENT_END = "end"
KEEPALIVE_COMMENT = "keep-alive"

STREAM_DOC = (
    "Server-Sent Events (`text/event-stream`). The task's current snapshot at once, then one per "
    "state change and per progress change (coalesced: at most about 4 a second), each as "
    "`id: <n>` (strictly increasing for the task; the resume token), `event: task` and `data:` the "
    "task exactly as `GET /tasks/{id}` shows it in `task`. The final state (completed, cancelled, or "
    "failed with no automatic retry to come) is sent as `event: end` and the stream closes. "
    "`Last-Event-ID` (sent by `EventSource` when it reconnects) or `?lastEventId=` resumes: only "
    "newer snapshots, and always the final `end`. A `: keep-alive` comment is sent after 15 quiet "
    "seconds. A task the caller may not see is a 404 before any event; a task deleted while watched "
    "ends the stream (reconnecting then answers 404)."
)


def _watcher(request: Request[Any, Any, Any]) -> TaskWatcher:
    watcher: TaskWatcher | None = request.app.state["runtime"].watcher
    if watcher is None:
        raise ServiceUnavailable("live task streams are not available in this process")
    return watcher


def _message(update: TaskUpdate) -> ServerSentEventMessage:
    # Litestar's own encoder, so the data is byte for byte what GET /tasks/{id} answers in "task".
    data = encode_json(mapping.task_out(update.task)).decode()
    return ServerSentEventMessage(data=data, event=EVENT_END if update.final else EVENT_TASK, id=update.seq)


async def _messages(
    stream: AsyncGenerator[TaskUpdate | None, None],
) -> AsyncGenerator[ServerSentEventMessage, None]:
    # aclosing: the watch is freed when the client goes away (Litestar cancels the response) or
    # the stream ends, not whenever the generator happens to be collected.
    async with contextlib.aclosing(stream):
        try:
            async for update in stream:
                if update is None:
                    yield ServerSentEventMessage(data=None, comment=KEEPALIVE_COMMENT)
                else:
                    yield _message(update)
        except (TaskNotFound, ServiceUnavailable):
            # Deleted while watched, or this process is shutting down: the response is under way,
            # so the stream just closes. EventSource reconnects with Last-Event-ID (to another
            # replica, or to a 404 that ends it).
            return


class TaskStreamController(Controller):
    """Live task snapshots over HTTP (the SSE face of gRPC ``WatchTask``)."""

    path = "/api/v1/operations"
    tags = ["Tasks"]  # noqa: RUF012 - Litestar reads this class attribute as is

    @get(
        "/tasks/{id:str}/stream",
        operation_id="WatchTask",
        summary="Follow a task live: Server-Sent Events until it ends",
        description=STREAM_DOC,
        responses={
            200: ResponseSpec(
                TaskOut,
                description="An event stream; each event's data is a task (as in GET /tasks/{id})",
                media_type="text/event-stream",
                generate_examples=False,
            ),
            **problem_responses(400, 401, 403, 404, 429, 503),
        },
    )
    async def watch_task(
        self,
        id: FromPath[str],
        call: Call,
        request: Request[Any, Any, Any],
        last_event_id: Annotated[
            str | None,
            HeaderParameter(
                name="Last-Event-ID",
                required=False,
                description="The id of the last event received: the stream resumes after it",
            ),
        ] = None,
        last_event_id_query: Annotated[
            str | None,
            QueryParameter(
                name="lastEventId",
                required=False,
                description="As the Last-Event-ID header (which wins when both are given)",
            ),
        ] = None,
    ) -> ServerSentEvent:
        """Stream the task's snapshots; hidden or missing tasks are a 404 before any event."""
        raw = last_event_id if last_event_id is not None else last_event_id_query
        field = "Last-Event-ID" if last_event_id is not None else "lastEventId"
        after = parse_after_seq(raw, field=field)
        stream = await _watcher(request).watch(call.tasks, call.principal, parse_task_id(id), after_seq=after)
        return ServerSentEvent(_messages(stream))
