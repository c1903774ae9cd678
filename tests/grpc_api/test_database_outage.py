"""An unreachable database is UNAVAILABLE to retry over gRPC, never INTERNAL."""

from __future__ import annotations

import asyncpg
import grpc
import pytest

from common_operations.bootstrap import Runtime
from common_operations.domain.principal import Principal
from common_operations.domain.task import CreateTask
from common_operations.grpc.v1 import operations_pb2 as pb
from tests.grpc_api.support import ALICE, error_code


async def _outage(*args: object, **kwargs: object) -> None:
    raise asyncpg.exceptions.ConnectionDoesNotExistError("connection was closed in the middle of operation")


async def test_grpc_answers_unavailable_while_postgres_is_unreachable(
    runtime: Runtime, monkeypatch: pytest.MonkeyPatch, grpc_address: str
) -> None:
    from common_operations.grpc.v1 import operations_pb2_grpc

    task = await runtime.tasks.create_task(Principal("outage"), CreateTask("process", "product", "outage"))
    monkeypatch.setattr(runtime.repository, "get", _outage)
    async with grpc.aio.insecure_channel(grpc_address) as channel:
        stub = operations_pb2_grpc.OperationsServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.GetTask(pb.GetTaskRequest(id=str(task.id)), metadata=ALICE)
    assert info.value.code() is grpc.StatusCode.UNAVAILABLE
    assert error_code(info.value) == "SERVICE_UNAVAILABLE"
