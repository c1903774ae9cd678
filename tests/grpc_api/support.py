"""Helpers for calling OperationsService in tests."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

import asyncpg
import grpc
import grpc.aio
import pytest
from google.protobuf import struct_pb2

from common_operations.grpc.v1 import operations_pb2 as pb
from tests.auth_support import metadata

if TYPE_CHECKING:
    from common_operations.grpc.v1.operations_pb2_grpc import OperationsServiceAsyncStub

T = TypeVar("T")

# Operator (reads and changes any task) and service (creates tasks for other requesters).
ALICE = metadata("alice", ["operator", "service"])
# The catalog's worker: a service allowed to report on every test task type ("*" reporters).
WORKER = metadata("catalog-worker", ["service"])


def owner(prefix: str = "grpc") -> str:
    """A requested_by nobody else uses, so a test sees only its own tasks in shared tables."""
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def struct(value: dict[str, Any]) -> struct_pb2.Struct:
    """A Struct holding ``value``."""
    s = struct_pb2.Struct()
    s.update(value)
    return s


async def create(stub: OperationsServiceAsyncStub, task_type: str = "process", **fields: Any) -> pb.Task:
    """Create a task (as alice unless ``requested_by`` is given) and return it."""
    fields.setdefault("entity_type", "product")
    response = await stub.CreateTask(pb.CreateTaskRequest(task_type=task_type, **fields), metadata=ALICE)
    return response.task


async def get(stub: OperationsServiceAsyncStub, task_id: str) -> pb.Task:
    """The task as GetTask returns it."""
    return (await stub.GetTask(pb.GetTaskRequest(id=task_id), metadata=ALICE)).task


async def report(stub: OperationsServiceAsyncStub, task_id: str, **fields: Any) -> pb.Task:
    """Send a progress report as the external worker."""
    request = pb.UpdateTaskProgressRequest(task_id=task_id, **fields)
    return (await stub.UpdateTaskProgress(request, metadata=WORKER)).task


def error_code(err: grpc.aio.AioRpcError) -> str | None:
    """The stable ``error-code`` trailing metadata of a failed call."""
    value = dict(err.trailing_metadata() or ()).get("error-code")
    return value if isinstance(value, str) else None


async def expect_error(call: Awaitable[object], status: grpc.StatusCode, code: str) -> grpc.aio.AioRpcError:
    """Await ``call``, asserting it fails with ``status`` and the stable ``code``."""
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    err = info.value
    assert err.code() == status, f"{err.code()}: {err.details()}"
    assert error_code(err) == code, err.details()
    return err


def reading(read: Callable[[], T]) -> Callable[[], Awaitable[T]]:
    """An awaitable probe for ``assert_eventually`` over plain in-process state."""

    async def probe() -> T:
        return read()

    return probe


async def record_output(database_url: str, task_id: str, url: str) -> None:
    """Give a task an output file in the mirror, as a handler that writes one would.

    No task type behind the API writes output files yet; the row is changed directly (the write
    path of the mirror is not what the tests using this are about).
    """
    conn = await asyncpg.connect(database_url)
    try:
        status = await conn.execute(
            "UPDATE tasks SET output_file_url = $1 WHERE id = $2", url, uuid.UUID(task_id)
        )
    finally:
        await conn.close()
    assert status == "UPDATE 1", status
