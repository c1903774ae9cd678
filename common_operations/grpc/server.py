"""The grpc.aio server: OperationsService, the standard health service and server reflection."""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Final

import grpc
import grpc.aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from common_operations.bootstrap import Runtime
from common_operations.grpc.errors import lenient_deserializer
from common_operations.grpc.log_context import LogContextInterceptor
from common_operations.grpc.metrics import MetricsInterceptor
from common_operations.grpc.servicer import OperationsServicer
from common_operations.grpc.v1 import operations_pb2, operations_pb2_grpc
from common_operations.infra import telemetry
from common_operations.infra.tls import grpc_server_credentials

log = logging.getLogger(__name__)

OPERATIONS_SERVICE: Final = operations_pb2.DESCRIPTOR.services_by_name["OperationsService"].full_name
HEALTH_SERVICE: Final = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name
OVERALL_HEALTH: Final = ""
SHUTDOWN_GRACE_SECONDS: Final = 5.0

# The largest valid request (a CreateTask with 64 KiB of params) is far below this; grpc answers a
# larger one RESOURCE_EXHAUSTED before any of our code runs (its default would be 4 MiB).
MAX_RECEIVE_MESSAGE_BYTES: Final = 1024 * 1024
# The largest answer is a ListTasks page of 1000 tasks, each carrying its params twice (64 KiB of
# JSON text and the same as a Struct) plus up to 4000 characters of error message: about 135 MiB.
# A page beyond this (params whose numbers grow as Struct doubles) is refused RESOURCE_EXHAUSTED; a
# smaller pageSize gets it. Clients keep grpc's 4 MiB receive limit unless they raise it.
MAX_SEND_MESSAGE_BYTES: Final = 256 * 1024 * 1024

SERVER_OPTIONS: Final = (
    # Linux gRPC binds with SO_REUSEPORT by default: a second instance on the same port would start
    # "successfully" and silently share the traffic. Fail loudly instead.
    ("grpc.so_reuseport", 0),
    ("grpc.max_receive_message_length", MAX_RECEIVE_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_SEND_MESSAGE_BYTES),
)


def add_operations_service(
    servicer: operations_pb2_grpc.OperationsServiceServicer, server: grpc.aio.Server
) -> None:
    """Register ``servicer`` as the generated ``add_OperationsServiceServicer_to_server`` does.

    The one difference: requests are decoded by :func:`lenient_deserializer`, so a message protobuf
    cannot decode is answered INVALID_ARGUMENT by the method's error mapping instead of UNKNOWN by
    grpc. The methods are read from the service descriptor, so a new RPC needs no change here.

    Args:
        servicer: the OperationsService implementation.
        server: the server to add it to (not yet started).

    Raises:
        TypeError: the service gained a client-streaming method, which this registration does not handle.
    """
    service = operations_pb2.DESCRIPTOR.services_by_name["OperationsService"]
    handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {}
    for method in service.methods:
        if method.client_streaming:
            raise TypeError(f"{method.full_name} streams requests; register it with a streaming handler")
        request_class = getattr(operations_pb2, method.input_type.name)
        response_class = getattr(operations_pb2, method.output_type.name)
        # WatchTask answers with a stream; every other method with one message.
        kind = (
            grpc.unary_stream_rpc_method_handler
            if method.server_streaming
            else grpc.unary_unary_rpc_method_handler
        )
        handlers[method.name] = kind(
            getattr(servicer, method.name),
            request_deserializer=lenient_deserializer(request_class),
            response_serializer=response_class.SerializeToString,
        )
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service.full_name, handlers),))
    server.add_registered_method_handlers(service.full_name, handlers)


async def build_server(
    runtime: Runtime,
    host: str,
    port: int,
    *,
    health_servicer: health.aio.HealthServicer | None = None,
) -> tuple[grpc.aio.Server, int]:
    """A server (not yet started) with the operations, health and reflection services.

    TLS (and client certificates) as ``grpc`` of the runtime's settings say; the reflection service
    only with ``grpc.reflection``.

    Args:
        runtime: the connected services the RPCs call.
        host: interface to listen on.
        port: port to listen on; 0 picks a free one.
        health_servicer: the health service to register, for callers that change its status later
            (graceful shutdown); a new one otherwise.

    Returns:
        The server and the port it is bound to.

    Raises:
        RuntimeError: the address cannot be bound.
        TlsConfigError: a configured certificate, key or CA file cannot be read.
    """
    config = runtime.settings.grpc
    credentials = grpc_server_credentials(config)
    # Log lines of a call carry its task id (grpc.log_context).
    server = grpc.aio.server(
        options=SERVER_OPTIONS,
        interceptors=[
            # Every call counted and timed by method and status code (co_grpc_*, grpc.metrics).
            MetricsInterceptor(),
            # With tracing on, a server span per call continuing traceparent metadata (telemetry).
            *telemetry.grpc_server_interceptors(),
            LogContextInterceptor(),
        ],
    )
    add_operations_service(OperationsServicer(runtime.tasks, runtime.auth, watcher=runtime.watcher), server)
    health_servicer = health_servicer or health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    if config.reflection:
        reflection.enable_server_reflection(
            (OPERATIONS_SERVICE, HEALTH_SERVICE, reflection.SERVICE_NAME), server
        )
    address = f"{host}:{port}"
    bound = (
        server.add_secure_port(address, credentials)
        if credentials is not None
        else server.add_insecure_port(address)
    )
    for service in (OPERATIONS_SERVICE, OVERALL_HEALTH):
        await health_servicer.set(service, health_pb2.HealthCheckResponse.SERVING)
    return server, bound


async def serve_grpc(runtime: Runtime, host: str, port: int) -> None:
    """Serve until cancelled, then drain in-flight calls for up to five seconds.

    Health checks report NOT_SERVING first, so load balancers stop routing new calls here while
    the running ones finish.

    Args:
        runtime: the connected services the RPCs call.
        host: interface to listen on.
        port: port to listen on.
    """
    health_servicer = health.aio.HealthServicer()
    server, bound = await build_server(runtime, host, port, health_servicer=health_servicer)
    await server.start()
    tls = "TLS" if runtime.settings.grpc.tls_cert_file is not None else "plaintext"
    log.info("gRPC listening on %s:%d (%s)", host, bound, tls)
    try:
        await server.wait_for_termination()
    except asyncio.CancelledError:
        log.info("gRPC shutting down (grace %gs)", SHUTDOWN_GRACE_SECONDS)
        await health_servicer.enter_graceful_shutdown()
        # WatchTask streams end at once (UNAVAILABLE: resume elsewhere) instead of using the grace.
        if runtime.watcher is not None:
            await runtime.watcher.close()
        await server.stop(grace=SHUTDOWN_GRACE_SECONDS)
        raise
