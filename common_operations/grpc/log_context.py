"""Per-call log context of the gRPC API: the task a call is about.

grpc.aio runs every call in a task of its own, so what a call binds (its ``task_id`` here, the
``principal`` once authenticated) ends with the call and never reaches another one.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeAlias

import grpc
import grpc.aio

from common_operations.infra.logs import bind

# Subscripted for the type checker only (grpc's runtime class is not generic).
_Handler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"
# Request fields that hold a task id: ``id`` on a task's own RPCs, ``task_id`` on the others.
_TASK_ID_FIELDS = ("task_id", "id")


def _task_id(request: Any) -> str | None:
    for name in _TASK_ID_FIELDS:
        value = getattr(request, name, None)
        if isinstance(value, str) and value:
            # The caller's text, not yet validated: bounded.
            return value[:64]
    return None


def _wrap(behavior: Callable[..., Any]) -> Callable[..., Any]:
    # Bound when grpc calls the behaviour, in the call's task. The wrapper must be of the same kind
    # as the behaviour: grpc.aio (and the metrics interceptor) tell a server-streaming behaviour by
    # it being an async generator function, and a plain function returning one would be run as a
    # coroutine handler that writes nothing (WatchTask would end at once, OK and empty).
    if inspect.isasyncgenfunction(behavior):

        async def stream(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
            bind(task_id=_task_id(request))
            async for response in behavior(request, context):
                yield response

        return stream

    async def call(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        bind(task_id=_task_id(request))
        result = behavior(request, context)
        return await result if inspect.isawaitable(result) else result

    return call


class LogContextInterceptor(grpc.aio.ServerInterceptor):
    """Binds the request's task id to the call's log lines (unary and server-streaming methods)."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[_Handler | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> _Handler | None:
        """The method's handler with its behaviour wrapped (None for an unknown method)."""
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        # The handlers grpc builds are named tuples (grpc._utilities.RpcMethodHandler).
        replace: Callable[..., _Handler] = getattr(handler, "_replace")  # noqa: B009
        if handler.unary_unary is not None:
            return replace(unary_unary=_wrap(handler.unary_unary))
        if handler.unary_stream is not None:
            return replace(unary_stream=_wrap(handler.unary_stream))
        return handler
