"""The grpc.aio server: OperationsService, the standard health service and server reflection."""

from __future__ import annotations

import asyncio
import logging
from typing import Final

import grpc
import grpc.aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from common_operations.bootstrap import Runtime
from common_operations.grpc.servicer import OperationsServicer
from common_operations.grpc.v1 import operations_pb2, operations_pb2_grpc

log = logging.getLogger(__name__)

OPERATIONS_SERVICE: Final = operations_pb2.DESCRIPTOR.services_by_name["OperationsService"].full_name
HEALTH_SERVICE: Final = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name
OVERALL_HEALTH: Final = ""
SHUTDOWN_GRACE_SECONDS: Final = 5.0

_OPTIONS: Final = (
    # Linux gRPC binds with SO_REUSEPORT by default: a second instance on the same port would start
    # "successfully" and silently share the traffic. Fail loudly instead.
    ("grpc.so_reuseport", 0),
)


async def build_server(
    runtime: Runtime,
    host: str,
    port: int,
    *,
    health_servicer: health.aio.HealthServicer | None = None,
) -> tuple[grpc.aio.Server, int]:
    """A server (not yet started) with the operations, health and reflection services.

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
    """
    server = grpc.aio.server(options=_OPTIONS)
    operations_pb2_grpc.add_OperationsServiceServicer_to_server(OperationsServicer(runtime.tasks), server)
    health_servicer = health_servicer or health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection((OPERATIONS_SERVICE, HEALTH_SERVICE, reflection.SERVICE_NAME), server)
    bound = server.add_insecure_port(f"{host}:{port}")
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
    log.info("gRPC listening on %s:%d", host, bound)
    try:
        await server.wait_for_termination()
    except asyncio.CancelledError:
        log.info("gRPC shutting down (grace %gs)", SHUTDOWN_GRACE_SECONDS)
        await health_servicer.enter_graceful_shutdown()
        await server.stop(grace=SHUTDOWN_GRACE_SECONDS)
        raise
