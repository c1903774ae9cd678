"""gRPC server metrics: every call counted and timed by method and status code."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Any

import grpc
import grpc.aio
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import REGISTRY

from common_operations.grpc.v1 import operations_pb2

if TYPE_CHECKING:
    from common_operations.grpc.v1.operations_pb2_grpc import OperationsServiceAsyncStub

SERVICE = "/api.operations.v1.OperationsService"


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_calls_are_counted_by_method_and_status_code(
    stub: OperationsServiceAsyncStub, channel: grpc.aio.Channel
) -> None:
    create = {"method": f"{SERVICE}/CreateTask", "code": "OK"}
    missing = {"method": f"{SERVICE}/GetTask", "code": "NOT_FOUND"}
    health = {"method": "/grpc.health.v1.Health/Check", "code": "OK"}
    before = {
        "create": sample("co_grpc_requests_total", **create),
        "create_latency": sample("co_grpc_request_duration_seconds_count", **create),
        "missing": sample("co_grpc_requests_total", **missing),
        "health": sample("co_grpc_requests_total", **health),
    }

    await stub.CreateTask(operations_pb2.CreateTaskRequest(task_type="process", entity_type="product"))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.GetTask(operations_pb2.GetTaskRequest(id=str(uuid.uuid4())))
    assert err.value.code() is grpc.StatusCode.NOT_FOUND
    health_stub: Any = health_pb2_grpc.HealthStub(channel)  # untyped generated stub
    await health_stub.Check(health_pb2.HealthCheckRequest(service=""))

    assert sample("co_grpc_requests_total", **create) == before["create"] + 1
    assert sample("co_grpc_request_duration_seconds_count", **create) == before["create_latency"] + 1
    assert sample("co_grpc_requests_total", **missing) == before["missing"] + 1
    assert sample("co_grpc_requests_total", **health) == before["health"] + 1
    # Nothing is left in flight once the calls are answered.
    assert sample("co_grpc_in_flight", method=f"{SERVICE}/CreateTask") == 0


async def test_a_refused_call_is_counted_with_its_code(stub: OperationsServiceAsyncStub) -> None:
    refused = {"method": f"{SERVICE}/CreateTask", "code": "INVALID_ARGUMENT"}
    before = sample("co_grpc_requests_total", **refused)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.CreateTask(operations_pb2.CreateTaskRequest(task_type="no-such-type", entity_type="x"))
    assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert sample("co_grpc_requests_total", **refused) == before + 1
