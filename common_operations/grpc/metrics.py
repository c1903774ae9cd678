"""Prometheus metrics of the gRPC server: calls by method and status code, latency, calls in flight.

A server interceptor wraps every registered method's behaviour (unary and streaming alike, the
health and reflection services included). ``method`` is the full method name of a registered
handler (``/api.operations.v1.OperationsService/CreateTask``), so the label set is bounded by the
services the server offers; a call of an unknown method reaches no handler and is not counted.
``code`` is the status the call ended with (``OK``, ``NOT_FOUND``, …, ``CANCELLED`` when the client
went away). A streaming call (``WatchTask``) is timed over its whole life.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Final, TypeAlias

import grpc
import grpc.aio
from prometheus_client import Counter, Gauge, Histogram

CALLS: Final = Counter(
    "co_grpc_requests",
    "gRPC calls answered by the server, by full method name and status code.",
    ("method", "code"),
)
LATENCY: Final = Histogram(
    "co_grpc_request_duration_seconds",
    "Time from receiving a gRPC call to its status (a stream: its whole life).",
    ("method", "code"),
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 60.0, 600.0),
)
IN_FLIGHT: Final = Gauge(
    "co_grpc_in_flight",
    "gRPC calls being served (open streams included), by method.",
    ("method",),
)

_Behavior = Callable[..., Any]
# Generic only in the type stubs.
_Handler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"


def _status(context: grpc.aio.ServicerContext[Any, Any], error: BaseException | None) -> str:
    """The status name a call ended with."""
    if isinstance(error, asyncio.CancelledError):
        return grpc.StatusCode.CANCELLED.name
    # Typed as a StatusCode, but grpc's aio context may hold the raw status number (or nothing).
    code: object = context.code()
    if isinstance(code, grpc.StatusCode):
        return code.name
    if isinstance(code, int):
        for known in grpc.StatusCode:
            if known.value[0] == code:
                return known.name
    if error is not None and not isinstance(error, grpc.aio.AbortError):
        # Raised past every handler: grpc answers UNKNOWN.
        return grpc.StatusCode.UNKNOWN.name
    return grpc.StatusCode.OK.name


class _Call:
    """Timing and counting of one call."""

    __slots__ = ("method", "start")

    def __init__(self, method: str) -> None:
        self.method = method
        self.start = time.perf_counter()
        IN_FLIGHT.labels(method).inc()

    def done(self, context: grpc.aio.ServicerContext[Any, Any], error: BaseException | None) -> None:
        code = _status(context, error)
        IN_FLIGHT.labels(self.method).dec()
        CALLS.labels(self.method, code).inc()
        LATENCY.labels(self.method, code).observe(time.perf_counter() - self.start)


def _wrap(method: str, behavior: _Behavior) -> _Behavior:
    """``behavior`` counted and timed; async generators (streams) stay async generators."""
    if inspect.isasyncgenfunction(behavior):

        async def stream(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
            call = _Call(method)
            error: BaseException | None = None
            try:
                async for response in behavior(request, context):
                    yield response
            except BaseException as exc:
                error = exc
                raise
            finally:
                call.done(context, error)

        return stream

    async def unary(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        call = _Call(method)
        error: BaseException | None = None
        try:
            result = behavior(request, context)
            return await result if inspect.isawaitable(result) else result
        except BaseException as exc:
            error = exc
            raise
        finally:
            call.done(context, error)

    return unary


class MetricsInterceptor(grpc.aio.ServerInterceptor):
    """Counts and times every call of a registered method (see the module docstring)."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[_Handler | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> _Handler | None:
        """The method's handler with its behaviour wrapped (None for an unknown method)."""
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method
        for kind in ("unary_unary", "unary_stream", "stream_unary", "stream_stream"):
            behavior = getattr(handler, kind, None)
            if behavior is not None:
                # The handlers grpc builds are named tuples (grpc._utilities.RpcMethodHandler).
                replace: Callable[..., _Handler] = getattr(handler, "_replace")  # noqa: B009
                return replace(**{kind: _wrap(method, behavior)})
        return handler
