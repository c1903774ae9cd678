"""Built-in import and export over real gRPC: upload URL, counts, stored files, RetryFailedRows, manifest.

The server, the service's worker, the local storage backend and the ``commerce`` sink database are
the test runtime's real ones; tests/services/test_bulk_import.py drives the same tasks through the
service layer and checks the rows and files in detail.
"""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING

import grpc

from common_operations.bootstrap import Runtime
from common_operations.domain.principal import Principal
from common_operations.grpc.mapping import struct_to_dict
from common_operations.grpc.v1 import operations_pb2 as pb
from tests.grpc_api.support import ALICE, expect_error, get, struct
from tests.helpers import assert_eventually

if TYPE_CHECKING:
    from common_operations.grpc.v1.operations_pb2_grpc import OperationsServiceAsyncStub

# A bulk task runs a workflow, a bulk activity and the sink's transactions: slower than a process task.
BULK_TIMEOUT = 60.0
# Reads the storage key of an import's input, which the proto does not carry.
READER = Principal(subject="grpc-bulk-tester", roles=frozenset({"admin"}))


def _sku() -> str:
    # Unique per test: the session's tests share the commerce database.
    return f"G{uuid.uuid4().hex[:10]}"


async def _finished(stub: OperationsServiceAsyncStub, task_id: str) -> pb.Task:
    return await assert_eventually(
        lambda: get(stub, task_id),
        lambda t: t.status in ("completed", "failed", "cancelled"),
        timeout=BULK_TIMEOUT,
    )


async def _upload(runtime: Runtime, task_id: str, data: bytes) -> None:
    # Straight into storage, as a PUT to the signed upload URL would (tests/web covers the PUT).
    task = await runtime.tasks.get_task(READER, uuid.UUID(task_id))
    with runtime.storage.open_write(task.files["input"]["key"], content_type="text/csv") as out:
        out.write(data)


async def test_import_counts_rows_serves_its_result_and_retries_the_failed_rows(
    stub: OperationsServiceAsyncStub, runtime: Runtime
) -> None:
    created = await stub.CreateTask(
        pb.CreateTaskRequest(
            task_type="import", entity_type="products", file_name="p.csv", content_type="text/csv"
        ),
        metadata=ALICE,
    )
    assert created.upload_url and created.HasField("upload_url_expires_at")
    task = created.task
    assert not task.HasField("source_task_id") and not task.HasField("manifest")
    good, bad = _sku(), _sku()
    await _upload(runtime, task.id, f"sku,name,price\n{good},Widget,1.5\n{bad},,2\n".encode())

    done = await _finished(stub, task.id)
    assert done.status == "completed", done.error_message
    counts = (done.processed_records, done.success_records, done.failed_records)
    assert counts == (2, 1, 1)
    assert "result" in done.files_available and "input" in done.files_available

    result = await stub.GetDownloadUrl(
        pb.GetDownloadUrlRequest(task_id=task.id, file="result"), metadata=ALICE
    )
    assert result.download_url and result.HasField("expires_at")
    assert result.file_name == "p.result.csv"
    source = await stub.GetDownloadUrl(
        pb.GetDownloadUrlRequest(task_id=task.id, file="input"), metadata=ALICE
    )
    assert source.download_url != result.download_url and source.file_name == "p.csv"
    await expect_error(
        stub.GetDownloadUrl(pb.GetDownloadUrlRequest(task_id=task.id, file="bogus"), metadata=ALICE),
        grpc.StatusCode.INVALID_ARGUMENT,
        "VALIDATION_FAILED",
    )
    # Unset file means the output, which an import does not have.
    await expect_error(
        stub.GetDownloadUrl(pb.GetDownloadUrlRequest(task_id=task.id), metadata=ALICE),
        grpc.StatusCode.FAILED_PRECONDITION,
        "NOT_AVAILABLE",
    )

    # With a file name: a new import, linked to the first, that waits for the corrected rows.
    retry = await stub.RetryFailedRows(
        pb.RetryFailedRowsRequest(id=task.id, file_name="fixed.csv", file_size=32), metadata=ALICE
    )
    assert retry.task.id != task.id and retry.task.source_task_id == task.id
    assert retry.task.task_type == "import" and retry.task.file_name == "fixed.csv"
    assert retry.upload_url and retry.HasField("upload_url_expires_at")
    await _upload(runtime, retry.task.id, f"sku,name,price\n{bad},Fixed,2\n".encode())
    again = await _finished(stub, retry.task.id)
    assert again.status == "completed", again.error_message
    assert (again.processed_records, again.success_records, again.failed_records) == (1, 1, 0)
    assert again.source_task_id == task.id
    # The source keeps its own counts.
    assert (await get(stub, task.id)).failed_records == 1

    # Without one: the rejected rows are taken from the source's input, nothing to upload.
    taken_over = await stub.RetryFailedRows(pb.RetryFailedRowsRequest(id=task.id), metadata=ALICE)
    assert taken_over.task.source_task_id == task.id and not taken_over.HasField("upload_url")
    assert (await _finished(stub, taken_over.task.id)).failed_records == 1  # the same bad row


async def test_retry_failed_rows_is_refused_for_a_task_that_is_not_a_finished_import(
    stub: OperationsServiceAsyncStub,
) -> None:
    process = (
        await stub.CreateTask(
            pb.CreateTaskRequest(task_type="process", entity_type="product"), metadata=ALICE
        )
    ).task
    await expect_error(
        stub.RetryFailedRows(pb.RetryFailedRowsRequest(id=process.id), metadata=ALICE),
        grpc.StatusCode.FAILED_PRECONDITION,
        "INVALID_TRANSITION",
    )
    waiting = await stub.CreateTask(
        pb.CreateTaskRequest(task_type="import", entity_type="products", file_name="p.csv"), metadata=ALICE
    )
    await expect_error(
        stub.RetryFailedRows(pb.RetryFailedRowsRequest(id=waiting.task.id), metadata=ALICE),
        grpc.StatusCode.FAILED_PRECONDITION,
        "INVALID_TRANSITION",
    )
    await stub.CancelTask(pb.CancelTaskRequest(id=waiting.task.id), metadata=ALICE)


async def test_export_has_a_manifest_struct_and_no_upload_url(stub: OperationsServiceAsyncStub) -> None:
    created = await stub.CreateTask(
        pb.CreateTaskRequest(
            task_type="export",
            entity_type="products",
            params_object=struct({"format": "csv", "filters": {"category": "none-such"}}),
        ),
        metadata=ALICE,
    )
    assert not created.HasField("upload_url") and not created.HasField("upload_url_expires_at")
    done = await _finished(stub, created.task.id)
    assert done.status == "completed", done.error_message
    assert done.HasField("manifest") and done.files_available == ["output"]
    manifest = struct_to_dict(done.manifest)
    # No product is in that category: a header-only file, still with its size and checksum.
    assert manifest["rows"] == 0 and manifest["bytes"] > 0
    assert isinstance(manifest["sha256"], str) and len(manifest["sha256"]) == 64
    assert manifest["format"] == "csv" and manifest["entityType"] == "products"
    assert manifest["filters"] == {"category": "none-such"}
    output = await stub.GetDownloadUrl(pb.GetDownloadUrlRequest(task_id=done.id), metadata=ALICE)
    assert output.download_url and output.HasField("expires_at")
    assert output.file_name and output.file_name.endswith(".csv")
