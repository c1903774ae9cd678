"""Bad input and failures become the right gRPC status with the stable ``error-code`` metadata."""

from __future__ import annotations

import json
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import grpc
import pytest
from google.protobuf import struct_pb2, timestamp_pb2

from common_operations.bootstrap import Runtime
from common_operations.domain.errors import RateLimited
from common_operations.domain.task import (
    MAX_ENTITY_TYPE_LENGTH,
    MAX_FILE_NAME_LENGTH,
    MAX_PARAMS_BYTES,
    MAX_PARAMS_DEPTH,
    MAX_REQUESTED_BY_LENGTH,
    MAX_TASK_TYPE_LENGTH,
)
from common_operations.grpc.server import MAX_RECEIVE_MESSAGE_BYTES, MAX_SEND_MESSAGE_BYTES, SERVER_OPTIONS
from common_operations.grpc.v1 import operations_pb2 as pb
from tests.grpc_api.support import ALICE, create, expect_error, report

if TYPE_CHECKING:
    from common_operations.grpc.v1.operations_pb2_grpc import OperationsServiceAsyncStub

INVALID = grpc.StatusCode.INVALID_ARGUMENT

TaskIdCall = Callable[["OperationsServiceAsyncStub", str], Awaitable[Any]]

TASK_ID_CALLS: dict[str, TaskIdCall] = {
    "GetTask": lambda s, i: s.GetTask(pb.GetTaskRequest(id=i), metadata=ALICE),
    "CancelTask": lambda s, i: s.CancelTask(pb.CancelTaskRequest(id=i), metadata=ALICE),
    "RetryTask": lambda s, i: s.RetryTask(pb.RetryTaskRequest(id=i), metadata=ALICE),
    "DeleteTask": lambda s, i: s.DeleteTask(pb.DeleteTaskRequest(id=i), metadata=ALICE),
    "UpdateTaskProgress": lambda s, i: s.UpdateTaskProgress(
        pb.UpdateTaskProgressRequest(task_id=i, processed_records=1), metadata=ALICE
    ),
    "GetDownloadUrl": lambda s, i: s.GetDownloadUrl(pb.GetDownloadUrlRequest(task_id=i), metadata=ALICE),
    "GetTaskLogs": lambda s, i: s.GetTaskLogs(pb.GetTaskLogsRequest(task_id=i), metadata=ALICE),
    "GetTaskEvents": lambda s, i: s.GetTaskEvents(pb.GetTaskEventsRequest(task_id=i), metadata=ALICE),
    "RetryFailedRows": lambda s, i: s.RetryFailedRows(pb.RetryFailedRowsRequest(id=i), metadata=ALICE),
}


def _ts(value: datetime) -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.FromDatetime(value)
    return ts


@pytest.mark.parametrize("rpc", sorted(TASK_ID_CALLS))
async def test_bad_uuid_is_invalid_argument(stub: OperationsServiceAsyncStub, rpc: str) -> None:
    err = await expect_error(TASK_ID_CALLS[rpc](stub, "not-a-uuid"), INVALID, "VALIDATION_FAILED")
    assert "not a valid UUID" in (err.details() or "")
    await expect_error(TASK_ID_CALLS[rpc](stub, ""), INVALID, "VALIDATION_FAILED")


@pytest.mark.parametrize("rpc", sorted(TASK_ID_CALLS))
async def test_unknown_task_is_not_found(stub: OperationsServiceAsyncStub, rpc: str) -> None:
    await expect_error(
        TASK_ID_CALLS[rpc](stub, str(uuid.uuid4())), grpc.StatusCode.NOT_FOUND, "TASK_NOT_FOUND"
    )


async def test_unknown_task_type_lists_the_allowed_ones(stub: OperationsServiceAsyncStub) -> None:
    err = await expect_error(create(stub, "teleport"), INVALID, "UNKNOWN_TASK_TYPE")
    details = err.details() or ""
    assert "teleport" in details
    for allowed in ("process", "data_sync", "delegated_echo"):
        assert allowed in details


@pytest.mark.parametrize(
    ("fields", "needle"),
    [
        ({"task_type": ""}, "taskType is required"),
        ({"params": "[1, 2]"}, "params must be a JSON object"),
        ({"params": "{not json"}, "params is not valid JSON"),
        ({"params_json": "[1, 2]"}, "params must be a JSON object"),
        ({"params_json": "{not json"}, "params is not valid JSON"),
        ({"max_retries": 101}, "maxRetries"),
        ({"max_retries": -1}, "maxRetries"),
        ({"file_size": -5}, "fileSize"),
        ({"priority": 5000}, "priority"),
    ],
)
async def test_bad_create_requests(
    stub: OperationsServiceAsyncStub, fields: dict[str, Any], needle: str
) -> None:
    fields = {"task_type": "process", **fields}
    err = await expect_error(create(stub, **fields), INVALID, "VALIDATION_FAILED")
    assert needle in (err.details() or "")


@pytest.mark.parametrize(
    ("fields", "needle"),
    [
        ({"processed_records": -1}, "processedRecords must not be negative"),
        ({"total_records": -10}, "totalRecords must not be negative"),
        ({"failed_records": -1}, "failedRecords must not be negative"),
        ({"total_records": 5, "processed_records": 6}, "exceeds totalRecords"),
        ({"processed_records": 2, "success_records": 2, "failed_records": 1}, "exceeds processedRecords"),
        ({"processed_records": 1, "report_id": "r" * 201}, "reportId"),
        ({"processed_records": 1, "report_id": "line\nbreak"}, "reportId"),
        ({"processed_records": 1, "report_id": ""}, "reportId"),
    ],
)
async def test_bad_progress_reports(
    stub: OperationsServiceAsyncStub, fields: dict[str, Any], needle: str
) -> None:
    task = await create(stub)
    err = await expect_error(report(stub, task.id, **fields), INVALID, "VALIDATION_FAILED")
    assert needle in (err.details() or "")
    # A rejected report changes nothing.
    after = (await stub.GetTask(pb.GetTaskRequest(id=task.id), metadata=ALICE)).task
    assert after.status == "pending" and after.processed_records == 0


async def test_report_on_completed_task_is_refused(stub: OperationsServiceAsyncStub) -> None:
    task = await create(stub)
    await report(stub, task.id, total_records=1, processed_records=1, success_records=1, is_completed=True)
    err = await expect_error(
        report(stub, task.id, processed_records=1), grpc.StatusCode.FAILED_PRECONDITION, "INVALID_TRANSITION"
    )
    assert "completed" in (err.details() or "")


@pytest.mark.parametrize(
    ("filters", "needle"),
    [
        ({"page_size": 0}, "pageSize"),
        ({"page_size": -3}, "pageSize"),
        ({"page": 0}, "page must be 1 or more"),
        ({"status": "running"}, "unknown status 'running'"),
        ({"search": "x" * 201}, "search"),
        (
            {
                "start_date": _ts(datetime.now(UTC)),
                "end_date": _ts(datetime.now(UTC) - timedelta(days=1)),
            },
            "startDate is after endDate",
        ),
    ],
)
async def test_bad_list_requests(
    stub: OperationsServiceAsyncStub, filters: dict[str, Any], needle: str
) -> None:
    err = await expect_error(
        stub.ListTasks(pb.ListTasksRequest(**filters), metadata=ALICE), INVALID, "VALIDATION_FAILED"
    )
    assert needle in (err.details() or "")


async def test_bad_log_and_event_paging(stub: OperationsServiceAsyncStub) -> None:
    task = await create(stub)
    await expect_error(
        stub.GetTaskLogs(pb.GetTaskLogsRequest(task_id=task.id, page_size=0), metadata=ALICE),
        INVALID,
        "VALIDATION_FAILED",
    )
    await expect_error(
        stub.GetTaskEvents(pb.GetTaskEventsRequest(task_id=task.id, page=0), metadata=ALICE),
        INVALID,
        "VALIDATION_FAILED",
    )
    await expect_error(
        stub.GetTaskEvents(pb.GetTaskEventsRequest(task_id=task.id, page_size=1001), metadata=ALICE),
        INVALID,
        "VALIDATION_FAILED",
    )


async def test_unexpected_errors_are_internal_without_details(
    stub: OperationsServiceAsyncStub,
    runtime: Runtime,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def broken(*args: object) -> None:
        raise RuntimeError("connection string postgres://secret@db")

    monkeypatch.setattr(runtime.tasks, "get_task", broken)
    err = await expect_error(
        stub.GetTask(pb.GetTaskRequest(id=str(uuid.uuid4())), metadata=ALICE),
        grpc.StatusCode.INTERNAL,
        "INTERNAL",
    )
    assert "secret" not in (err.details() or "")
    assert any("GetTask" in r.getMessage() and r.exc_info for r in caplog.records)


# --- limits (issue §7: no input gets INTERNAL) ----------------------------------------------------


@pytest.mark.parametrize(
    ("field", "limit", "name"),
    [
        ("task_type", MAX_TASK_TYPE_LENGTH, "taskType"),
        ("entity_type", MAX_ENTITY_TYPE_LENGTH, "entityType"),
        ("requested_by", MAX_REQUESTED_BY_LENGTH, "requestedBy"),
        ("file_name", MAX_FILE_NAME_LENGTH, "fileName"),
    ],
)
async def test_text_longer_than_its_column_is_invalid_argument(
    stub: OperationsServiceAsyncStub, field: str, limit: int, name: str
) -> None:
    fields = {"task_type": "process", field: "x" * (limit + 1)}
    err = await expect_error(
        stub.CreateTask(pb.CreateTaskRequest(**fields), metadata=ALICE), INVALID, "VALIDATION_FAILED"
    )
    assert f"{name} is longer than {limit}" in (err.details() or "")


@pytest.mark.parametrize(
    ("field", "limit"), [("task_type", 100), ("entity_type", 100), ("requested_by", 255), ("search", 200)]
)
async def test_list_filter_longer_than_its_column_is_invalid_argument(
    stub: OperationsServiceAsyncStub, field: str, limit: int
) -> None:
    request = pb.ListTasksRequest(**{field: "x" * (limit + 1)})
    await expect_error(stub.ListTasks(request, metadata=ALICE), INVALID, "VALIDATION_FAILED")


async def test_params_over_the_size_limit_is_resource_exhausted(stub: OperationsServiceAsyncStub) -> None:
    params = json.dumps({"blob": "x" * MAX_PARAMS_BYTES})
    err = await expect_error(
        create(stub, params_json=params), grpc.StatusCode.RESOURCE_EXHAUSTED, "PAYLOAD_TOO_LARGE"
    )
    assert str(MAX_PARAMS_BYTES) in (err.details() or "")


async def test_params_nested_too_deeply_is_invalid_argument(stub: OperationsServiceAsyncStub) -> None:
    deep = '{"a":' * (MAX_PARAMS_DEPTH + 1) + "1" + "}" * (MAX_PARAMS_DEPTH + 1)
    await expect_error(create(stub, params_json=deep), INVALID, "VALIDATION_FAILED")
    deeper = '{"a":' + "[" * 100_000 + "]" * 100_000 + "}"
    await expect_error(create(stub, params_json=deeper), INVALID, "VALIDATION_FAILED")


async def test_message_over_the_receive_limit_is_resource_exhausted_by_grpc(
    stub: OperationsServiceAsyncStub,
) -> None:
    # Refused by grpc before any of our code runs, so there is no error-code metadata.
    request = pb.CreateTaskRequest(task_type="process", entity_type="x" * MAX_RECEIVE_MESSAGE_BYTES)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.CreateTask(request, metadata=ALICE)
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, info.value.details()


async def test_server_sets_explicit_message_limits() -> None:
    options = dict(SERVER_OPTIONS)
    assert options["grpc.max_receive_message_length"] == MAX_RECEIVE_MESSAGE_BYTES == 1024 * 1024
    assert options["grpc.max_send_message_length"] == MAX_SEND_MESSAGE_BYTES


async def test_page_beyond_what_an_offset_holds_is_invalid_argument(stub: OperationsServiceAsyncStub) -> None:
    # int32 on the wire: the largest page is allowed and simply empty.
    response = await stub.ListTasks(pb.ListTasksRequest(page=2**31 - 1, page_size=1000), metadata=ALICE)
    assert list(response.tasks) == []


@pytest.mark.parametrize(
    "ts",
    [
        pytest.param(timestamp_pb2.Timestamp(seconds=-62135596801), id="before-year-1"),
        pytest.param(timestamp_pb2.Timestamp(seconds=253402300800), id="after-year-9999"),
        pytest.param(timestamp_pb2.Timestamp(seconds=2**62), id="far-beyond"),
        pytest.param(timestamp_pb2.Timestamp(seconds=0, nanos=-1), id="negative-nanos"),
        pytest.param(timestamp_pb2.Timestamp(seconds=0, nanos=10**9), id="nanos-overflow"),
    ],
)
async def test_timestamp_out_of_protobuf_range_is_invalid_argument(
    stub: OperationsServiceAsyncStub, ts: timestamp_pb2.Timestamp
) -> None:
    await expect_error(
        stub.ListTasks(pb.ListTasksRequest(start_date=ts), metadata=ALICE), INVALID, "VALIDATION_FAILED"
    )
    await expect_error(create(stub, scheduled_at=ts), INVALID, "VALIDATION_FAILED")


async def test_rate_limited_is_resource_exhausted_with_retry_after(
    stub: OperationsServiceAsyncStub, runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def limited(*args: object) -> None:
        raise RateLimited("Temporal is busy; try again shortly", retry_after=0.4)

    monkeypatch.setattr(runtime.tasks, "list_tasks", limited)
    err = await expect_error(
        stub.ListTasks(pb.ListTasksRequest(), metadata=ALICE),
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "RATE_LIMITED",
    )
    assert dict(err.trailing_metadata() or ())["retry-after"] == "1"  # rounded up, as REST's header


def _struct_nested(depth: int) -> bytes:
    """A CreateTaskRequest whose Struct params nest ``depth`` levels (beyond protobuf's decoder limit)."""
    field = next(
        f.name
        for f in pb.CreateTaskRequest.DESCRIPTOR.fields
        if f.message_type is struct_pb2.Struct.DESCRIPTOR
    )
    root = struct_pb2.Struct()
    level = root
    for _ in range(depth):
        level = level.fields["a"].struct_value
    request = pb.CreateTaskRequest(task_type="process")
    getattr(request, field).CopyFrom(root)
    return request.SerializeToString()


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(b"\x0a\x02\xff\xfe", id="invalid-utf8-in-a-string"),
        pytest.param(b"\x0a\xff\xff\xff\xff\x0f", id="truncated"),
        pytest.param(b"\xff", id="garbage"),
        pytest.param(_struct_nested(150), id="struct-nested-beyond-the-decoder-limit"),
    ],
)
async def test_undecodable_message_is_invalid_argument_not_unknown(
    channel: grpc.aio.Channel, raw: bytes
) -> None:
    # grpc itself would answer a deserializer's exception UNKNOWN, with the exception's text.
    call = channel.unary_unary("/api.operations.v1.OperationsService/CreateTask")
    err = await expect_error(call(raw, metadata=ALICE), INVALID, "VALIDATION_FAILED")
    assert "api.operations.v1.CreateTaskRequest" in (err.details() or "")


async def test_every_rpc_is_registered(stub: OperationsServiceAsyncStub) -> None:
    # The service is registered from its descriptor (server.add_operations_service).
    response = await stub.Health(pb.HealthRequest(), metadata=ALICE)
    assert response.status == "healthy"
    await expect_error(
        stub.ListTasks(pb.ListTasksRequest(page=0), metadata=ALICE), INVALID, "VALIDATION_FAILED"
    )


@pytest.mark.parametrize(
    "call",
    [
        pytest.param(lambda s: s.GetTask(pb.GetTaskRequest(id="é" * 4001), metadata=ALICE), id="id"),
        pytest.param(
            lambda s: s.ListTasks(pb.ListTasksRequest(status="é" * 5000), metadata=ALICE), id="status"
        ),
    ],
)
async def test_error_naming_a_long_input_still_reaches_the_caller(
    stub: OperationsServiceAsyncStub, call: Callable[[OperationsServiceAsyncStub], Awaitable[Any]]
) -> None:
    # Found by the fuzzer: the message echoed the whole input; percent-encoded in the grpc-message
    # trailer it passed the client's 16 KiB metadata limit and the answer became RESOURCE_EXHAUSTED
    # "Stream removed", without error-code.
    err = await expect_error(call(stub), INVALID, "VALIDATION_FAILED")
    assert len((err.details() or "").encode()) <= 1024


@pytest.mark.parametrize(
    "params",
    [
        pytest.param('{"a": ' + "9" * 5000 + "}", id="int-past-pythons-4300-digit-limit"),
        pytest.param('{"a": ' + "9" * 400 + "}", id="int-beyond-a-double"),
    ],
)
async def test_params_numbers_a_struct_cannot_hold_are_invalid_argument(
    stub: OperationsServiceAsyncStub, params: str
) -> None:
    # A 400-digit integer used to be stored, then every read of the task over gRPC (the Struct's
    # doubles) failed with INTERNAL, starting with CreateTask's own answer.
    await expect_error(create(stub, params=params), INVALID, "VALIDATION_FAILED")
