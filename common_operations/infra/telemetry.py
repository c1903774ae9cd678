"""OpenTelemetry tracing: one tracer provider per process, the instrumentations, and their hooks.

One trace follows a request end to end: the REST or gRPC server span (an incoming W3C
``traceparent`` is its parent), the service layer's use case, the Temporal client call, the
workflow and its activities (Temporal's ``TracingInterceptor`` carries the context in Temporal
headers, so a delegated activity on another service's queue joins the trace too), and below them
the Postgres queries (asyncpg), Redis calls and outgoing HTTP requests (httpx, which also sends
``traceparent`` to webhooks and HTTP sinks).

Tracing is off unless ``observability.tracing`` is true or the standard
``OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT`` is set (``OTEL_SDK_DISABLED=true`` wins over both). Spans
are exported over OTLP; the exporter reads its endpoint, headers, timeout and compression from the
standard ``OTEL_EXPORTER_OTLP_*`` variables, the sampler from ``OTEL_TRACES_SAMPLER(_ARG)``, the
resource from ``OTEL_SERVICE_NAME`` / ``OTEL_RESOURCE_ATTRIBUTES``.

The SDK allows one global tracer provider per process, so :func:`enable_tracing` installs it once;
tests install theirs (an in-memory exporter) through the same function.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import logging
import os
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import Any, Final, TypeVar

import grpc.aio
from litestar.middleware.base import DefineMiddleware
from litestar.plugins.opentelemetry import OpenTelemetryConfig, OpenTelemetryInstrumentationMiddleware
from litestar.types import ASGIApp, Receive, Scope, Send
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.sampling import Decision, Sampler, SamplingResult
from opentelemetry.trace import Link, SpanKind
from opentelemetry.trace.span import TraceState
from opentelemetry.util.types import Attributes
from temporalio.client import Interceptor as ClientInterceptor
from temporalio.contrib.opentelemetry import TracingInterceptor

from common_operations.config import ObservabilitySettings

log = logging.getLogger(__name__)

T = TypeVar("T")

TRACER_NAME: Final = "common_operations"
# Paths without server spans: probes and scrapes every few seconds would bury the traces that
# matter, and the signed file URLs carry their signature in the query string (a credential).
UNTRACED_PATHS: Final = ("^/health", "^/metrics", "^/api/v1/files/")
# gRPC services without server spans: probes and reflection are not requests of the service.
_UNTRACED_GRPC_SERVICES: Final = ("grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection")
# The task id is the one argument worth a span attribute (bounded, not secret, the key to the logs).
TASK_ID_ATTRIBUTE: Final = "co.task_id"


class _State:
    """What this process set up (module-level: the OTel providers are process-global as well)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.provider: TracerProvider | None = None
        self.enabled = False
        self.instrumentors: list[Any] = []


_state = _State()


def tracing_requested(settings: ObservabilitySettings, environ: Mapping[str, str] | None = None) -> bool:
    """Whether this process should trace: configured on, or an OTLP endpoint in the environment.

    Args:
        settings: the ``observability`` settings.
        environ: the environment (``os.environ`` by default).
    """
    env = os.environ if environ is None else environ
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    endpoint = env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    return settings.tracing or bool(endpoint)


def otlp_exporter(environ: Mapping[str, str] | None = None) -> SpanExporter:
    """The OTLP span exporter ``OTEL_EXPORTER_OTLP_(TRACES_)PROTOCOL`` names.

    ``http/protobuf`` (the OTLP specification's default) or ``grpc``; each exporter reads its
    endpoint, headers, certificate, timeout and compression from the ``OTEL_EXPORTER_OTLP_*``
    variables itself.

    Raises:
        ValueError: an unsupported protocol (``http/json`` has no Python exporter).
    """
    env = os.environ if environ is None else environ
    protocol = (
        (env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or env.get("OTEL_EXPORTER_OTLP_PROTOCOL") or "")
        .strip()
        .lower()
    ) or "http/protobuf"
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter

        return GrpcExporter()
    if protocol == "http/protobuf":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter

        return HttpExporter()
    raise ValueError(
        f"OTEL_EXPORTER_OTLP_PROTOCOL {protocol!r} is not supported; use 'grpc' or 'http/protobuf'"
    )


class SkipBackgroundRoots(Sampler):
    """Drop client spans that start a trace; decide everything else with the configured sampler.

    A database query, Redis call or HTTP request outside any operation (the outbox sweeper, the
    gauges, the reconciler keeper polling every few seconds) would each start a trace of one span
    and bury the requests' traces. Inside a request or an activity they have a parent and are kept.
    """

    def __init__(self, delegate: Sampler) -> None:
        """Wrap ``delegate``, the sampler that decides every other span."""
        self._delegate = delegate

    def should_sample(
        self,
        parent_context: otel_context.Context | None,
        trace_id: int,
        name: str,
        kind: SpanKind | None = None,
        attributes: Attributes = None,
        links: Sequence[Link] | None = None,
        trace_state: TraceState | None = None,
    ) -> SamplingResult:
        """Implementation of :meth:`Sampler.should_sample`."""
        parent = trace.get_current_span(parent_context).get_span_context()
        if kind is SpanKind.CLIENT and not parent.is_valid:
            return SamplingResult(Decision.DROP)
        return self._delegate.should_sample(
            parent_context, trace_id, name, kind, attributes, links, trace_state
        )

    def get_description(self) -> str:
        """Implementation of :meth:`Sampler.get_description`."""
        return f"SkipBackgroundRoots{{{self._delegate.get_description()}}}"


def build_provider(service_name: str, exporter: SpanExporter | None = None) -> TracerProvider:
    """A tracer provider exporting in batches to ``exporter`` (none: add processors yourself).

    Args:
        service_name: ``service.name`` unless ``OTEL_SERVICE_NAME`` says otherwise.
        exporter: where finished spans go.
    """
    attributes = {} if os.environ.get("OTEL_SERVICE_NAME") else {SERVICE_NAME: service_name}
    # A provider built without a sampler reads OTEL_TRACES_SAMPLER(_ARG): borrow that parsing.
    configured = TracerProvider(shutdown_on_exit=False).sampler
    provider = TracerProvider(resource=Resource.create(attributes), sampler=SkipBackgroundRoots(configured))
    if exporter is not None:
        provider.add_span_processor(BatchSpanProcessor(exporter))
    return provider


def enable_tracing(provider: TracerProvider) -> TracerProvider:
    """Make ``provider`` the process's tracer provider and instrument asyncpg, Redis and httpx.

    The global provider can be set once per process: a second call keeps the first provider (and
    returns it) but instruments the libraries again if :func:`disable_tracing` undid that.

    Returns:
        The provider in use.
    """
    with _state.lock:
        if _state.provider is None:
            trace.set_tracer_provider(provider)
            _state.provider = provider
        if not _state.instrumentors:
            _state.instrumentors = _instrument_libraries()
        _state.enabled = True
        return _state.provider


def _instrument_libraries() -> list[Any]:
    from opentelemetry.instrumentation.asyncpg import AsyncPGInstrumentor
    from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor
    from opentelemetry.instrumentation.redis import RedisInstrumentor

    # The asyncpg and gRPC instrumentations are untyped.
    asyncpg: Any = AsyncPGInstrumentor
    instrumentors: list[Any] = [asyncpg(), RedisInstrumentor(), HTTPXClientInstrumentor()]
    for instrumentor in instrumentors:
        instrumentor.instrument()
    return instrumentors


def disable_tracing() -> None:
    """Stop creating spans in new apps, servers and clients, and undo the library instrumentation.

    The global provider stays (it cannot be replaced); tests call this when they are done.
    """
    with _state.lock:
        for instrumentor in _state.instrumentors:
            instrumentor.uninstrument()
        _state.instrumentors = []
        _state.enabled = False


def configure_tracing(settings: ObservabilitySettings) -> bool:
    """Set up tracing for this process from the settings and the ``OTEL_*`` environment (idempotent).

    Returns:
        Whether tracing is on.

    Raises:
        ValueError: an unsupported ``OTEL_EXPORTER_OTLP_PROTOCOL``.
    """
    if _state.enabled:
        return True
    if not tracing_requested(settings):
        return False
    exporter = otlp_exporter()
    enable_tracing(build_provider(settings.service_name, exporter))
    log.info("tracing on: spans are exported over OTLP (%s)", type(exporter).__module__.split(".")[-2])
    return True


def shutdown_tracing() -> None:
    """Export the spans still buffered and stop the exporter (blocking: call it off the event loop).

    The process leaves with ``os._exit`` (the CLI, sdk-python#300), which skips the SDK's own
    ``atexit`` flush.
    """
    with _state.lock:
        provider = _state.provider if _state.enabled else None
    if provider is not None:
        provider.shutdown()


@contextlib.asynccontextmanager
async def tracing(settings: ObservabilitySettings) -> AsyncIterator[bool]:
    """Configure tracing for a serving process (:func:`configure_tracing`); flush it on exit.

    Yields:
        Whether tracing is on.
    """
    enabled = configure_tracing(settings)
    try:
        yield enabled
    finally:
        if enabled:
            # Bounded by the exporter's timeout (OTEL_EXPORTER_OTLP_TIMEOUT, 10 s by default).
            await asyncio.to_thread(shutdown_tracing)


def tracing_enabled() -> bool:
    """Whether spans are being created in this process."""
    return _state.enabled


def current_trace_ids() -> tuple[str, str] | None:
    """``(trace_id, span_id)`` of the current span in hex, for log lines; ``None`` outside a trace."""
    ctx = trace.get_current_span().get_span_context()
    if not ctx.is_valid:
        return None
    return format(ctx.trace_id, "032x"), format(ctx.span_id, "016x")


# -- transports ---------------------------------------------------------------------------------


def temporal_interceptors() -> list[ClientInterceptor]:
    """Interceptors for ``Client.connect``: spans for client calls, workflows and activities.

    Workers built on the client inherit them (``TracingInterceptor`` is a worker interceptor too).
    """
    return [TracingInterceptor()] if _state.enabled else []


class _RouteNamedMiddleware(OpenTelemetryInstrumentationMiddleware):
    """Litestar's OpenTelemetry middleware, naming the server span after the matched route.

    The span starts before routing, when only the raw path is known (``/tasks/8f1c…``: one name
    per task). When the response starts the router has put the route's template in the scope; it
    must be read then, since the span ends with the last body message.
    """

    def __init__(self, app: ASGIApp, config: OpenTelemetryConfig) -> None:
        async def named(scope: Scope, receive: Receive, send: Send) -> None:
            span = trace.get_current_span()

            async def send_named(message: Any) -> None:
                if message["type"] == "http.response.start" and span.is_recording():
                    template = scope.get("path_template")
                    if template:
                        span.update_name(f"{scope.get('method', '')} {template}".strip())
                        span.set_attribute("http.route", str(template))
                await send(message)

            await app(scope, receive, send_named)

        super().__init__(named, config)


def litestar_middleware() -> list[DefineMiddleware]:
    """Litestar middleware creating REST server spans (continuing an incoming ``traceparent``).

    Litestar moves it outside every other middleware and the router (its OpenTelemetry plugin
    does that for a middleware of this class), so the span covers the whole request.
    """
    if not _state.enabled:
        return []
    config = OpenTelemetryConfig(
        exclude=list(UNTRACED_PATHS),
        # One span per request: ASGI send/receive spans would add one per SSE message.
        exclude_spans=["receive", "send"],
        middleware_class=_RouteNamedMiddleware,
    )
    return [config.middleware]


def grpc_server_interceptors() -> list[grpc.aio.ServerInterceptor]:
    """Server interceptors for gRPC, creating a span per call (continuing ``traceparent`` metadata)."""
    if not _state.enabled:
        return []
    from opentelemetry.instrumentation.grpc import aio_server_interceptor, filters

    untraced = filters.any_of(*(filters.service_name(name) for name in _UNTRACED_GRPC_SERVICES))
    make: Any = aio_server_interceptor  # untyped
    interceptor: grpc.aio.ServerInterceptor = make(filter_=filters.negate(untraced))
    return [interceptor]


# -- service layer ------------------------------------------------------------------------------

C = TypeVar("C", bound=type)


def traced_use_cases(cls: C) -> C:
    """Class decorator: a span around each public coroutine method (``TaskService.create``, …).

    Async generators (streams) are left alone: a span open across their yields would become the
    consumer's current span. With tracing off the wrapper only checks a flag.
    """
    for name, member in list(vars(cls).items()):
        if name.startswith("_") or not inspect.iscoroutinefunction(member):
            continue
        setattr(cls, name, _traced(f"{cls.__name__}.{name}", member))
    return cls


def _traced(span_name: str, fn: Callable[..., Awaitable[T]]) -> Callable[..., Awaitable[T]]:
    signature = inspect.signature(fn)
    has_task_id = "task_id" in signature.parameters
    tracer = trace.get_tracer(TRACER_NAME)

    @functools.wraps(fn)
    async def wrapper(*args: Any, **kwargs: Any) -> T:
        if not _state.enabled:
            return await fn(*args, **kwargs)
        with tracer.start_as_current_span(span_name) as span:
            if has_task_id:
                try:
                    task_id = signature.bind_partial(*args, **kwargs).arguments.get("task_id")
                except TypeError:
                    task_id = None
                if task_id is not None:
                    span.set_attribute(TASK_ID_ATTRIBUTE, str(task_id))
            return await fn(*args, **kwargs)

    return wrapper
