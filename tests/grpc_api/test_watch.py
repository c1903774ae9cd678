"""``WatchTask``: the task's snapshots as a server stream, with the SSE stream's semantics."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING

import grpc
import grpc.aio
import pytest

from common_operations.bootstrap import Runtime
from common_operations.grpc.v1 import operations_pb2 as pb
from tests.auth_support import metadata
from tests.grpc_api.support import ALICE, create, error_code, owner, report

if TYPE_CHECKING:
    from common_operations.grpc.v1.operations_pb2_grpc import OperationsServiceAsyncStub

STEP = 20.0  # seconds any one expected message may take (a hang guard, not a speed test)

Call = grpc.aio.UnaryStreamCall[pb.WatchTaskRequest, pb.WatchTaskResponse]


def watch(stub: OperationsServiceAsyncStub, task_id: str, md: object = ALICE, **fields: int) -> Call:
    return stub.WatchTask(pb.WatchTaskRequest(id=task_id, **fields), metadata=md)  # type: ignore[arg-type]


async def read(call: Call) -> pb.WatchTaskResponse | None:
    """The next message; None at the end of the stream."""
    message: object = await asyncio.wait_for(call.read(), STEP)
    if message is grpc.aio.EOF:
        return None
    assert isinstance(message, pb.WatchTaskResponse)
    return message


async def until(call: Call, done: Callable[[pb.WatchTaskResponse], bool]) -> list[pb.WatchTaskResponse]:
    seen = []
    while True:
        message = await read(call)
        assert message is not None, "the stream ended early"
        seen.append(message)
        if done(message):
            return seen


async def test_snapshots_follow_progress_and_end_final(stub: OperationsServiceAsyncStub) -> None:
    task = await create(stub, requested_by=owner())
    call = watch(stub, task.id)
    first = await read(call)
    assert first is not None and first.task.id == task.id and first.seq >= 1 and not first.final
    assert first.task.status == "pending"

    await report(stub, task.id, total_records=10, processed_records=5)
    seen = await until(call, lambda m: m.task.processed_records == 5)
    assert seen[-1].task.status == "processing" and not seen[-1].final

    await report(stub, task.id, processed_records=10, success_records=10, is_completed=True)
    seen += await until(call, lambda m: m.final)
    assert seen[-1].task.status == "completed"
    assert [m.final for m in seen] == [False] * (len(seen) - 1) + [True]
    seqs = [first.seq] + [m.seq for m in seen]
    assert seqs == sorted(set(seqs))
    assert await read(call) is None
    assert await call.code() == grpc.StatusCode.OK
    # The final message carries the task as GetTask shows it.
    got = await stub.GetTask(pb.GetTaskRequest(id=task.id), metadata=ALICE)
    assert seen[-1].task == got.task


async def test_after_seq_resumes(stub: OperationsServiceAsyncStub) -> None:
    task = await create(stub, requested_by=owner())
    call = watch(stub, task.id)
    first = await read(call)
    assert first is not None
    call.cancel()

    await report(stub, task.id, total_records=2, processed_records=1)
    call = watch(stub, task.id, after_seq=first.seq)
    newer = await read(call)
    assert newer is not None and newer.seq > first.seq and newer.task.processed_records == 1
    await report(stub, task.id, processed_records=2, success_records=2, is_completed=True)
    end = (await until(call, lambda m: m.final))[-1]

    again = watch(stub, task.id, after_seq=end.seq)
    message = await read(again)
    assert message is not None and message.final and message.seq == end.seq
    assert await read(again) is None


async def test_hidden_missing_and_malformed_are_refused(stub: OperationsServiceAsyncStub) -> None:
    task = await create(stub, requested_by=owner())
    stranger = metadata("grpc-stranger", [])
    cases = [
        (watch(stub, task.id, stranger), grpc.StatusCode.NOT_FOUND, "TASK_NOT_FOUND"),
        (watch(stub, str(uuid.uuid4()), stranger), grpc.StatusCode.NOT_FOUND, "TASK_NOT_FOUND"),
        (watch(stub, "not-a-uuid"), grpc.StatusCode.INVALID_ARGUMENT, "VALIDATION_FAILED"),
        (watch(stub, task.id, after_seq=-1), grpc.StatusCode.INVALID_ARGUMENT, "VALIDATION_FAILED"),
    ]
    for call, status, code in cases:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await read(call)
        assert info.value.code() == status, info.value.details()
        assert error_code(info.value) == code


async def test_a_cancelled_call_frees_its_watch(runtime: Runtime, stub: OperationsServiceAsyncStub) -> None:
    assert runtime.watcher is not None
    task = await create(stub, requested_by=owner())
    call = watch(stub, task.id)
    assert await read(call) is not None
    assert runtime.watcher.watched == 1
    call.cancel()
    for _ in range(500):
        if runtime.watcher.watched == 0:
            break
        await asyncio.sleep(0.02)
    assert runtime.watcher.watched == 0


async def test_many_concurrent_watchers(stub: OperationsServiceAsyncStub) -> None:
    task = await create(stub, requested_by=owner())
    calls = [watch(stub, task.id) for _ in range(20)]
    for call in calls:
        assert await read(call) is not None
    await report(stub, task.id, total_records=1, processed_records=1, success_records=1, is_completed=True)
    finals = [(await until(call, lambda m: m.final))[-1] for call in calls]
    assert {m.seq for m in finals} == {finals[0].seq}
    assert all(m.task.status == "completed" for m in finals)


async def test_a_stopping_server_ends_streams_unavailable(
    runtime: Runtime, stub: OperationsServiceAsyncStub
) -> None:
    assert runtime.watcher is not None
    task = await create(stub, requested_by=owner())
    call = watch(stub, task.id)
    assert await read(call) is not None
    await runtime.watcher.close()
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await read(call)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    assert error_code(info.value) == "SERVICE_UNAVAILABLE"
