"""CreateTask's idempotency_key over gRPC: the same task again, ALREADY_EXISTS on reuse."""

from __future__ import annotations

import asyncio
import uuid
from typing import TYPE_CHECKING

import grpc

from common_operations.grpc.v1 import operations_pb2 as pb
from tests.auth_support import metadata
from tests.grpc_api.support import ALICE, expect_error, owner

if TYPE_CHECKING:
    from common_operations.grpc.v1.operations_pb2_grpc import OperationsServiceAsyncStub


def request(key: str, requested_by: str, priority: int = 0) -> pb.CreateTaskRequest:
    return pb.CreateTaskRequest(
        task_type="process",
        entity_type="product",
        requested_by=requested_by,
        priority=priority,
        idempotency_key=key,
    )


async def count(stub: OperationsServiceAsyncStub, requested_by: str) -> int:
    answer = await stub.ListTasks(pb.ListTasksRequest(requested_by=requested_by), metadata=ALICE)
    return int(answer.total)


async def test_the_same_key_and_body_answer_the_same_task(stub: OperationsServiceAsyncStub) -> None:
    key, who = uuid.uuid4().hex, owner()
    first = await stub.CreateTask(request(key, who), metadata=ALICE)
    again = await stub.CreateTask(request(key, who), metadata=ALICE)
    assert again.task.id == first.task.id
    assert await count(stub, who) == 1


async def test_the_key_with_another_body_is_already_exists(stub: OperationsServiceAsyncStub) -> None:
    key, who = uuid.uuid4().hex, owner()
    await stub.CreateTask(request(key, who), metadata=ALICE)
    await expect_error(
        stub.CreateTask(request(key, who, priority=7), metadata=ALICE),
        grpc.StatusCode.ALREADY_EXISTS,
        "IDEMPOTENCY_KEY_REUSED",
    )
    assert await count(stub, who) == 1


async def test_another_caller_with_the_same_key_gets_its_own_task(stub: OperationsServiceAsyncStub) -> None:
    key, who = uuid.uuid4().hex, owner()
    bob = metadata(f"bob-{who}", ["operator", "service"])
    a = await stub.CreateTask(request(key, who), metadata=ALICE)
    b = await stub.CreateTask(request(key, who), metadata=bob)
    assert a.task.id != b.task.id
    assert await count(stub, who) == 2


async def test_concurrent_creates_with_one_key_make_one_task(stub: OperationsServiceAsyncStub) -> None:
    key, who = uuid.uuid4().hex, owner()
    answers = await asyncio.gather(*(stub.CreateTask(request(key, who), metadata=ALICE) for _ in range(6)))
    assert len({a.task.id for a in answers}) == 1
    assert await count(stub, who) == 1


async def test_a_malformed_key_is_invalid_argument(stub: OperationsServiceAsyncStub) -> None:
    who = owner()
    await expect_error(
        stub.CreateTask(request("bad\nkey", who), metadata=ALICE),
        grpc.StatusCode.INVALID_ARGUMENT,
        "VALIDATION_FAILED",
    )
    assert await count(stub, who) == 0
