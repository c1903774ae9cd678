"""Task lifecycles driven through gRPC against real Postgres and Temporal."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import grpc
from google.protobuf import json_format, timestamp_pb2
from temporalio.client import Client

from common_operations.grpc.mapping import struct_to_dict
from common_operations.grpc.v1 import operations_pb2 as pb
from tests.auth_support import metadata
from tests.delegates import delegate_worker
from tests.grpc_api.support import ALICE, create, expect_error, get, reading, record_output, report, struct
from tests.helpers import assert_eventually

if TYPE_CHECKING:
    from common_operations.grpc.v1.operations_pb2_grpc import OperationsServiceAsyncStub


async def test_external_task_reports_progress_and_completes(stub: OperationsServiceAsyncStub) -> None:
    task = await create(stub, params='{"catalog": "summer", "batch": 7}', file_name="products.csv")
    assert task.status == "pending"
    assert task.requested_by == "alice"
    assert json.loads(task.params) == {"catalog": "summer", "batch": 7}
    assert struct_to_dict(task.params_object) == {"catalog": "summer", "batch": 7}
    assert task.max_retries == 3 and task.retry_count == 0
    assert task.HasField("created_at") and not task.HasField("started_at")

    task = await report(stub, task.id, total_records=10, processed_records=4, success_records=4)
    assert task.status == "processing"
    assert task.progress_percentage == 40.0
    assert task.HasField("started_at")

    await report(stub, task.id, processed_records=7, success_records=6, failed_records=1, message="7 of 10")
    await report(stub, task.id, processed_records=10, success_records=9, is_completed=True)

    task = await get(stub, task.id)
    assert task.status == "completed"
    counts = (task.total_records, task.processed_records, task.success_records, task.failed_records)
    assert counts == (10, 10, 9, 1)
    assert task.progress_percentage == 100.0
    assert task.HasField("completed_at") and not task.HasField("error_message")

    # Seed clients read proto3 JSON: the field names must be the seed's lowerCamelCase ones.
    as_json = json_format.MessageToDict(task)
    for name in ("taskType", "entityType", "requestedBy", "processedRecords", "progressPercentage"):
        assert name in as_json
    assert as_json["fileName"] == "products.csv"
    assert json.loads(as_json["params"]) == {"catalog": "summer", "batch": 7}  # a string, as the seed's


async def test_logs_and_events_are_in_order_and_paginated(stub: OperationsServiceAsyncStub) -> None:
    task = await create(stub)
    await report(stub, task.id, total_records=4, processed_records=1, success_records=1)
    await report(stub, task.id, processed_records=2, success_records=2, message="halfway there")
    await report(stub, task.id, processed_records=4, success_records=4, is_completed=True)

    events = await stub.GetTaskEvents(pb.GetTaskEventsRequest(task_id=task.id), metadata=ALICE)
    assert [e.event_type for e in events.events] == [
        "task.created",
        "task.started",
        "task.progress",
        "task.completed",
    ]
    assert [e.seq for e in events.events] == [0, 1, 2, 3]
    assert [e.status for e in events.events] == ["pending", "processing", "processing", "completed"]
    assert events.total == 4
    assert struct_to_dict(events.events[2].payload)["processedRecords"] == 2
    assert all(e.task_id == task.id and e.HasField("created_at") for e in events.events)
    # The seed's eventData: the payload as compact JSON text.
    assert all(json.loads(e.event_data) == struct_to_dict(e.payload) for e in events.events)
    compact = events.events[2].event_data
    assert json.dumps(json.loads(compact), separators=(",", ":"), ensure_ascii=False) == compact

    second = await stub.GetTaskEvents(
        pb.GetTaskEventsRequest(task_id=task.id, page=2, page_size=3), metadata=ALICE
    )
    assert [e.seq for e in second.events] == [3]
    assert (second.total, second.page, second.page_size) == (4, 2, 3)

    logs = await stub.GetTaskLogs(pb.GetTaskLogsRequest(task_id=task.id), metadata=ALICE)
    assert logs.total == 4
    assert [line.seq for line in logs.logs] == [0, 1, 2, 3]
    ids = [line.id for line in logs.logs]
    assert ids == sorted(ids) and len(set(ids)) == 4 and all(ids)
    assert "created by alice" in logs.logs[0].message
    assert logs.logs[2].message == "halfway there"
    page = await stub.GetTaskLogs(pb.GetTaskLogsRequest(task_id=task.id, page=1, page_size=2), metadata=ALICE)
    assert [line.seq for line in page.logs] == [0, 1] and page.total == 4


async def test_failed_task_is_retried_until_the_limit(stub: OperationsServiceAsyncStub) -> None:
    task = await create(stub, max_retries=1)
    assert task.max_retries == 1
    await report(stub, task.id, total_records=5, processed_records=1, success_records=1)

    failure = {"processed_records": 3, "failed_records": 2, "error_message": "catalog rejected the batch"}
    task = await report(stub, task.id, is_completed=True, **failure)
    assert task.status == "failed"
    assert task.error_message == "catalog rejected the batch"
    assert task.HasField("completed_at")

    retried = (await stub.RetryTask(pb.RetryTaskRequest(id=task.id), metadata=ALICE)).task
    assert retried.status == "pending"
    assert retried.retry_count == 1
    assert not retried.HasField("error_message") and not retried.HasField("completed_at")

    # The new run accepts reports like the first one did.
    task = await report(stub, task.id, processed_records=3, success_records=3)
    assert task.status == "processing"
    task = await report(stub, task.id, is_completed=True, error_message="still broken")
    assert task.status == "failed"

    err = await expect_error(
        stub.RetryTask(pb.RetryTaskRequest(id=task.id), metadata=ALICE),
        grpc.StatusCode.FAILED_PRECONDITION,
        "RETRY_LIMIT_EXCEEDED",
    )
    assert "1 of 1" in (err.details() or "")
    events = await stub.GetTaskEvents(pb.GetTaskEventsRequest(task_id=task.id), metadata=ALICE)
    assert [e.event_type for e in events.events].count("task.retried") == 1


async def test_retry_is_refused_unless_the_task_failed(stub: OperationsServiceAsyncStub) -> None:
    pending = await create(stub)
    await expect_error(
        stub.RetryTask(pb.RetryTaskRequest(id=pending.id), metadata=ALICE),
        grpc.StatusCode.FAILED_PRECONDITION,
        "INVALID_TRANSITION",
    )
    done = await create(stub)
    await report(stub, done.id, total_records=1, processed_records=1, success_records=1, is_completed=True)
    err = await expect_error(
        stub.RetryTask(pb.RetryTaskRequest(id=done.id), metadata=ALICE),
        grpc.StatusCode.FAILED_PRECONDITION,
        "INVALID_TRANSITION",
    )
    assert "completed" in (err.details() or "")


async def test_cancel_pending_task(stub: OperationsServiceAsyncStub) -> None:
    task = await create(stub)
    answer = await stub.CancelTask(pb.CancelTaskRequest(id=task.id), metadata=ALICE)
    assert answer.success
    cancelled = answer.task
    assert cancelled.status == "cancelled"
    assert cancelled.HasField("completed_at")

    await expect_error(
        stub.CancelTask(pb.CancelTaskRequest(id=task.id), metadata=ALICE),
        grpc.StatusCode.FAILED_PRECONDITION,
        "INVALID_TRANSITION",
    )
    await expect_error(
        report(stub, task.id, processed_records=1),
        grpc.StatusCode.FAILED_PRECONDITION,
        "INVALID_TRANSITION",
    )


async def test_cancel_scheduled_task(stub: OperationsServiceAsyncStub) -> None:
    when = timestamp_pb2.Timestamp()
    when.FromDatetime(datetime.now(UTC) + timedelta(hours=1))
    task = await create(stub, scheduled_at=when)
    assert task.status == "scheduled"
    assert task.scheduled_at == when

    # A scheduled task has not started: workers cannot report on it yet.
    await expect_error(
        report(stub, task.id, processed_records=1),
        grpc.StatusCode.FAILED_PRECONDITION,
        "INVALID_TRANSITION",
    )
    cancelled = (await stub.CancelTask(pb.CancelTaskRequest(id=task.id), metadata=ALICE)).task
    assert cancelled.status == "cancelled"
    events = await stub.GetTaskEvents(pb.GetTaskEventsRequest(task_id=task.id), metadata=ALICE)
    assert [e.event_type for e in events.events] == ["task.created", "task.cancelled"]


async def test_cancel_processing_task(stub: OperationsServiceAsyncStub) -> None:
    task = await create(stub)
    task = await report(stub, task.id, total_records=100, processed_records=10, success_records=10)
    assert task.status == "processing"

    cancelled = (await stub.CancelTask(pb.CancelTaskRequest(id=task.id), metadata=ALICE)).task
    assert cancelled.status == "cancelled"
    assert cancelled.processed_records == 10  # the progress made before stays visible

    await expect_error(
        report(stub, task.id, processed_records=20),
        grpc.StatusCode.FAILED_PRECONDITION,
        "INVALID_TRANSITION",
    )


async def test_delegated_task_completes(
    stub: OperationsServiceAsyncStub, client: Client, delegate_queue: str
) -> None:
    async with delegate_worker(client, delegate_queue) as probe:
        task = await create(stub, "delegated_echo", params_object=struct({"records": 5}))
        assert struct_to_dict(task.params_object) == {"records": 5}

        done = await assert_eventually(lambda: get(stub, task.id), lambda t: t.status == "completed")
    assert probe.started == [task.id]
    assert (done.total_records, done.processed_records, done.success_records) == (5, 5, 5)
    assert done.progress_percentage == 100.0


async def test_delegated_task_cancelled_while_processing_reaches_the_activity(
    stub: OperationsServiceAsyncStub, client: Client, delegate_queue: str
) -> None:
    async with delegate_worker(client, delegate_queue) as probe:
        task = await create(stub, "delegated_slow")
        await assert_eventually(lambda: get(stub, task.id), lambda t: t.status == "processing")
        await assert_eventually(reading(lambda: probe.heartbeats), lambda n: n > 0)

        # A delegated task completes when its activity returns, never by a report (not even an
        # admin's: a service is not a reporter of a delegated type and would not see the task).
        admin_report = pb.UpdateTaskProgressRequest(task_id=task.id, processed_records=1, is_completed=True)
        await expect_error(
            stub.UpdateTaskProgress(admin_report, metadata=metadata("grpc-admin", ["admin"])),
            grpc.StatusCode.INVALID_ARGUMENT,
            "VALIDATION_FAILED",
        )

        cancelled = (await stub.CancelTask(pb.CancelTaskRequest(id=task.id), metadata=ALICE)).task
        assert cancelled.status == "cancelled"
        await assert_eventually(reading(lambda: list(probe.cancelled)), lambda ids: task.id in ids)


async def test_delete_finished_tasks_but_not_active_ones(stub: OperationsServiceAsyncStub) -> None:
    completed = await create(stub)
    await report(
        stub, completed.id, total_records=1, processed_records=1, success_records=1, is_completed=True
    )
    failed = await create(stub)
    await report(stub, failed.id, is_completed=True, error_message="gave up")
    cancelled = await create(stub)
    await stub.CancelTask(pb.CancelTaskRequest(id=cancelled.id), metadata=ALICE)
    pending = await create(stub)

    for task in (completed, failed, cancelled):
        assert (await stub.DeleteTask(pb.DeleteTaskRequest(id=task.id), metadata=ALICE)).success
        await expect_error(get(stub, task.id), grpc.StatusCode.NOT_FOUND, "TASK_NOT_FOUND")
        await expect_error(
            stub.GetTaskEvents(pb.GetTaskEventsRequest(task_id=task.id), metadata=ALICE),
            grpc.StatusCode.NOT_FOUND,
            "TASK_NOT_FOUND",
        )

    err = await expect_error(
        stub.DeleteTask(pb.DeleteTaskRequest(id=pending.id), metadata=ALICE),
        grpc.StatusCode.FAILED_PRECONDITION,
        "INVALID_TRANSITION",
    )
    assert "cancel it first" in (err.details() or "")
    assert (await get(stub, pending.id)).status == "pending"


async def test_download_url(stub: OperationsServiceAsyncStub, database_url: str) -> None:
    task = await create(stub, file_name="export.csv")
    err = await expect_error(
        stub.GetDownloadUrl(pb.GetDownloadUrlRequest(task_id=task.id), metadata=ALICE),
        grpc.StatusCode.FAILED_PRECONDITION,
        "NOT_AVAILABLE",
    )
    assert "no output file" in (err.details() or "")

    await report(stub, task.id, total_records=1, processed_records=1, success_records=1, is_completed=True)
    await record_output(database_url, task.id, "file:///exports/export.csv")

    url = await stub.GetDownloadUrl(pb.GetDownloadUrlRequest(task_id=task.id), metadata=ALICE)
    assert url.download_url == "file:///exports/export.csv"
    assert url.file_name == "export.csv"
    assert not url.HasField("expires_at")
    assert set(json_format.MessageToDict(url)) == {"downloadUrl", "fileName"}  # seed: downloadUrl
    assert (await get(stub, task.id)).output_file_url == "file:///exports/export.csv"


async def test_params_in_each_spelling_read_the_same(stub: OperationsServiceAsyncStub) -> None:
    params = {"format": "csv", "filters": {"category": ["shoes", "bags"]}, "limit": 500, "name": "été"}
    as_string = await create(stub, params=json.dumps(params))  # the seed's field
    as_object = await create(stub, params_object=struct(params))
    as_alias = await create(stub, params_json=json.dumps(params))  # the earlier proto's alias
    for task in (as_string, as_object, as_alias, await get(stub, as_string.id)):
        assert json.loads(task.params) == params
        assert struct_to_dict(task.params_object) == params
    assert (await create(stub)).params == "{}"


async def test_cancel_reason_is_accepted_and_bounded(stub: OperationsServiceAsyncStub) -> None:
    task = await create(stub)
    await expect_error(
        stub.CancelTask(pb.CancelTaskRequest(id=task.id, reason="x" * 1001), metadata=ALICE),
        grpc.StatusCode.INVALID_ARGUMENT,
        "VALIDATION_FAILED",
    )
    assert (await get(stub, task.id)).status == "pending"
    answer = await stub.CancelTask(
        pb.CancelTaskRequest(id=task.id, reason="catalog import superseded"), metadata=ALICE
    )
    assert answer.success and answer.task.status == "cancelled"


async def test_progress_answer_carries_success(stub: OperationsServiceAsyncStub) -> None:
    task = await create(stub)
    request = pb.UpdateTaskProgressRequest(task_id=task.id, total_records=10, processed_records=2)
    answer = await stub.UpdateTaskProgress(request, metadata=ALICE)
    assert answer.success and answer.task.processed_records == 2
    assert set(json_format.MessageToDict(answer)) == {"success", "task"}
