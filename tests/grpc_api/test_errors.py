"""Bad input and failures become the right gRPC status with the stable ``error-code`` metadata."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import grpc
import pytest
from google.protobuf import timestamp_pb2

from common_operations.bootstrap import Runtime
from common_operations.grpc.v1 import operations_pb2 as pb
from tests.grpc_api.support import ALICE, create, expect_error, report

if TYPE_CHECKING:
    from common_operations.grpc.v1.operations_pb2_grpc import OperationsServiceAsyncStub

INVALID = grpc.StatusCode.INVALID_ARGUMENT

TaskIdCall = Callable[["OperationsServiceAsyncStub", str], Awaitable[Any]]

TASK_ID_CALLS: dict[str, TaskIdCall] = {
    "GetTask": lambda s, i: s.GetTask(pb.GetTaskRequest(task_id=i), metadata=ALICE),
    "CancelTask": lambda s, i: s.CancelTask(pb.CancelTaskRequest(task_id=i), metadata=ALICE),
    "RetryTask": lambda s, i: s.RetryTask(pb.RetryTaskRequest(task_id=i), metadata=ALICE),
    "DeleteTask": lambda s, i: s.DeleteTask(pb.DeleteTaskRequest(task_id=i), metadata=ALICE),
    "UpdateTaskProgress": lambda s, i: s.UpdateTaskProgress(
        pb.UpdateTaskProgressRequest(task_id=i, processed_records=1), metadata=ALICE
    ),
    "GetDownloadUrl": lambda s, i: s.GetDownloadUrl(pb.GetDownloadUrlRequest(task_id=i), metadata=ALICE),
    "GetTaskLogs": lambda s, i: s.GetTaskLogs(pb.GetTaskLogsRequest(task_id=i), metadata=ALICE),
    "GetTaskEvents": lambda s, i: s.GetTaskEvents(pb.GetTaskEventsRequest(task_id=i), metadata=ALICE),
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
    ],
)
async def test_bad_progress_reports(
    stub: OperationsServiceAsyncStub, fields: dict[str, Any], needle: str
) -> None:
    task = await create(stub)
    err = await expect_error(report(stub, task.id, **fields), INVALID, "VALIDATION_FAILED")
    assert needle in (err.details() or "")
    # A rejected report changes nothing.
    after = (await stub.GetTask(pb.GetTaskRequest(task_id=task.id), metadata=ALICE)).task
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
        stub.GetTask(pb.GetTaskRequest(task_id=str(uuid.uuid4())), metadata=ALICE),
        grpc.StatusCode.INTERNAL,
        "INTERNAL",
    )
    assert "secret" not in (err.details() or "")
    assert any("GetTask" in r.getMessage() and r.exc_info for r in caplog.records)
