"""Prometheus request metrics of the REST API and the ``/metrics`` endpoint.

A tiny ASGI middleware instead of ``litestar.plugins.prometheus``: the plugin builds a ``Request``
and several label dicts and resolves four labelled children per request (one of them twice, for an
in-progress gauge). Here the labelled children are resolved once per (method, route, status) and
cached, so the hot path is a clock read, a dict lookup and two lock-protected additions.

Labels use the route *template* (``/api/v1/operations/tasks/{task_id}``), never the raw path,
so cardinality stays bounded. Requests that match no route (404/405 from the router) never reach a
route's middleware; a ``before_send`` hook counts them under the route label ``<unmatched>``.

The metrics live in the default registry so that ``/metrics`` also shows what other components of
the process (gRPC server, Temporal worker) register there: the task metrics of
``infra.metrics``, the gRPC server's ``co_grpc_*`` and the Temporal SDK's ``temporal_*``.

A worker started on its own (``common-operations worker``) serves no REST API; it serves the same
guarded ``/metrics`` on ``observability.worker_metrics_port`` (:func:`serve_metrics`), so the
figures counted where the mirror is written, and its SDK worker metrics, can be scraped.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

import uvicorn
from litestar import Litestar, MediaType, Response, get
from litestar.datastructures import State
from litestar.enums import ScopeType
from litestar.types import ASGIApp, Message, Receive, Scope, Send
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, Counter, Histogram, generate_latest

from common_operations.web.errors import exception_handlers
from common_operations.web.security import internal_only

if TYPE_CHECKING:
    from common_operations.bootstrap import Runtime

UNMATCHED = "<unmatched>"

REQUESTS = Counter(
    "common_operations_http_requests_total",
    "HTTP requests answered by the REST API.",
    ("method", "route", "status"),
)
LATENCY = Histogram(
    "common_operations_http_request_duration_seconds",
    "Time from receiving an HTTP request to sending the last byte of its answer.",
    ("method", "route", "status"),
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)

# Unmatched requests carry whatever method the client sent; unknown ones share one label value.
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT"})

_Children = tuple[Counter, Histogram]
_children: dict[tuple[str, str, int], _Children] = {}
_unmatched: dict[tuple[str, int], Counter] = {}


def _children_for(method: str, route: str, status: int) -> _Children:
    key = (method, route, status)
    children = _children.get(key)
    if children is None:
        labels = (method, route, str(status))
        children = _children[key] = (REQUESTS.labels(*labels), LATENCY.labels(*labels))
    return children


def metrics_middleware(app: ASGIApp) -> ASGIApp:
    """Wrap a route's ASGI app so each HTTP request is counted and timed.

    Litestar places its exception handler inside route middleware, so the status seen here is the
    status the client receives, problem details included.
    """

    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP:
            await app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await app(scope, receive, send_wrapper)
        finally:
            count, latency = _children_for(scope["method"], scope["path_template"], status)
            count.inc()
            latency.observe(time.perf_counter() - start)

    return middleware


async def count_unmatched(message: Message, scope: Scope) -> None:
    """``before_send`` hook: count answers of requests that matched no route (no latency known)."""
    if message["type"] == "http.response.start":
        # The router sets these keys only when a route matched; the TypedDict declares them always.
        raw: Mapping[str, Any] = scope
        if "route_handler" not in raw:
            method = str(raw.get("method", "GET"))
            key = (method if method in _METHODS else "OTHER", message["status"])
            count = _unmatched.get(key)
            if count is None:
                count = _unmatched[key] = REQUESTS.labels(key[0], UNMATCHED, str(key[1]))
            count.inc()


@get(
    "/metrics",
    include_in_schema=False,
    sync_to_thread=False,
    media_type=MediaType.TEXT,
    # Only principals with one of http.internal_roles (open when that list is empty).
    guards=[internal_only],
)
def metrics() -> Response[bytes]:
    """Prometheus text exposition of the process's default registry."""
    # As a header: Litestar would append a second charset to a text/* media type.
    return Response(generate_latest(REGISTRY), headers={"content-type": CONTENT_TYPE_LATEST})


def create_metrics_app(runtime: Runtime) -> Litestar:
    """An app serving only ``/metrics`` (same guard as the REST API's), for a worker-only process."""
    return Litestar(
        route_handlers=[metrics],
        exception_handlers=exception_handlers(),
        state=State({"runtime": runtime}),
        openapi_config=None,
        logging_config=None,
        debug=False,
    )


class _Server(uvicorn.Server):
    """Uvicorn without its signal handling: the process supervisor owns SIGINT/SIGTERM."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        """Leave the process's signal handlers alone."""
        yield


async def serve_metrics(runtime: Runtime, host: str, port: int) -> None:
    """Serve ``/metrics`` until this coroutine's task is cancelled.

    Args:
        runtime: connected services (the guard authenticates callers with them); not closed here.
        host: interface to listen on.
        port: TCP port.

    Raises:
        OSError: the address cannot be bound.
    """
    config = uvicorn.Config(
        create_metrics_app(runtime),
        host=host,
        port=port,
        log_level="warning",
        log_config=None,
        access_log=False,
        lifespan="off",
        server_header=False,
    )
    server = _Server(config)

    async def serve() -> None:
        try:
            await server.serve()
        except SystemExit as exc:
            # Uvicorn exits the interpreter when it cannot bind: an error of this part instead.
            raise OSError(f"/metrics could not listen on {host}:{port} (status {exc.code})") from None

    serving = asyncio.ensure_future(serve())
    try:
        await asyncio.shield(serving)
    except asyncio.CancelledError:
        server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError, OSError):
            await serving
        raise
