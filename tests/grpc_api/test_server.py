"""The server around the servicer: health, reflection, callers, graceful shutdown."""

from __future__ import annotations

import asyncio
import socket
from typing import TYPE_CHECKING, Any

import grpc
import grpc.aio
import pytest
from google.protobuf import descriptor_pool
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

from common_operations.bootstrap import Runtime
from common_operations.grpc.server import serve_grpc
from common_operations.grpc.v1 import operations_pb2 as pb
from tests.grpc_api.support import create
from tests.helpers import assert_eventually

if TYPE_CHECKING:
    from common_operations.grpc.v1.operations_pb2_grpc import OperationsServiceAsyncStub

OPERATIONS = "api.operations.v1.OperationsService"
RPCS = {
    "CreateTask",
    "GetTask",
    "ListTasks",
    "CancelTask",
    "RetryTask",
    "UpdateTaskProgress",
    "GetDownloadUrl",
    "GetTaskLogs",
    "GetTaskEvents",
    "DeleteTask",
    "RetryFailedRows",
    "Health",
    "WatchTask",
}


async def test_health_rpc_reports_components(stub: OperationsServiceAsyncStub) -> None:
    health = await stub.Health(pb.HealthRequest())
    assert health.status == "healthy"
    assert health.components["database"] == "up"
    assert health.components["temporal"] == "up"


async def test_standard_health_check_is_serving(channel: grpc.aio.Channel) -> None:
    # typeshed's HealthStub declares no methods.
    health: Any = health_pb2_grpc.HealthStub(channel)
    for service in ("", OPERATIONS):
        response = await health.Check(health_pb2.HealthCheckRequest(service=service))
        assert response.status == health_pb2.HealthCheckResponse.SERVING
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await health.Check(health_pb2.HealthCheckRequest(service="no.such.Service"))
    assert info.value.code() == grpc.StatusCode.NOT_FOUND


def _reflect(address: str) -> tuple[list[str], set[str]]:
    # The reflection client is synchronous only.
    with grpc.insecure_channel(address) as channel:
        database = ProtoReflectionDescriptorDatabase(channel)
        services = database.get_services()
        pool = descriptor_pool.DescriptorPool(database)
        methods = {m.name for m in pool.FindServiceByName(OPERATIONS).methods}
    return services, methods


async def test_reflection_lists_the_services(grpc_address: str) -> None:
    services, methods = await asyncio.to_thread(_reflect, grpc_address)
    assert OPERATIONS in services
    assert "grpc.health.v1.Health" in services
    assert "grpc.reflection.v1alpha.ServerReflection" in services
    assert methods == RPCS


async def test_caller_comes_from_metadata(stub: OperationsServiceAsyncStub) -> None:
    as_alice = await create(stub)
    assert as_alice.requested_by == "alice"

    # dev auth mode (the test settings): no credentials = the local admin; x-user-id names nobody.
    request = pb.CreateTaskRequest(task_type="process", entity_type="product")
    dev = (await stub.CreateTask(request, metadata=(("x-user-id", "mallory"),))).task
    assert dev.requested_by == "local-admin"

    on_behalf = await create(stub, requested_by="catalog-service")
    assert on_behalf.requested_by == "catalog-service"

    logs = await stub.GetTaskLogs(pb.GetTaskLogsRequest(task_id=dev.id))
    assert "created by local-admin" in logs.logs[0].message


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def test_serve_grpc_serves_until_cancelled(runtime: Runtime) -> None:
    port = _free_port()
    server = asyncio.create_task(serve_grpc(runtime, "127.0.0.1", port))
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            health: Any = health_pb2_grpc.HealthStub(channel)

            async def check() -> int | None:
                try:
                    response = await health.Check(
                        health_pb2.HealthCheckRequest(service=OPERATIONS), timeout=1
                    )
                except grpc.aio.AioRpcError:
                    return None
                status: int = response.status
                return status

            await assert_eventually(check, lambda s: s == health_pb2.HealthCheckResponse.SERVING)
    finally:
        server.cancel()
        with pytest.raises(asyncio.CancelledError):
            await server

    # Stopped: the port no longer answers.
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await health.Check(health_pb2.HealthCheckRequest(), timeout=1)
        assert info.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
