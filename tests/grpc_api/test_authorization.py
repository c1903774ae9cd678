"""Roles × operations × ownership through gRPC: the same table as REST (tests/authz_table.py).

The test runtime is in ``dev`` auth mode: a call whose metadata carries a test token is that
token's principal.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable
from typing import TYPE_CHECKING

import grpc
import grpc.aio
import pytest
from google.protobuf.json_format import MessageToDict

from common_operations.bootstrap import Runtime
from common_operations.config import Settings
from common_operations.grpc.v1 import operations_pb2 as pb
from tests.auth_support import metadata
from tests.authz_table import (
    DENIED,
    EXPECTED,
    EXPECTED_CREATE,
    EXPECTED_LIST,
    HIDDEN,
    NARROW,
    NARROW_REPORTER,
    OK,
    OPS,
    ROLES,
    WHOSE,
    audit_rows,
    cast,
    differences,
    prepared,
    roles_of,
    with_narrow_type,
)
from tests.grpc_api.support import error_code, expect_error

if TYPE_CHECKING:
    from common_operations.grpc.v1.operations_pb2_grpc import OperationsServiceAsyncStub

Metadata = tuple[tuple[str, str], ...]

# An allowed operation that fails on the prepared task's state for its own reason (no file yet; a
# `process` task is not an import): checked after authorization, so it still counts as allowed.
ALLOWED_FAILURE = {"download": "NOT_AVAILABLE", "retry_failed_rows": "INVALID_TRANSITION"}


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """The test settings with a type only one service reports on."""
    return with_narrow_type(settings)


def call(stub: OperationsServiceAsyncStub, op: str, task_id: str, md: Metadata) -> Awaitable[object]:
    """The RPC of ``op`` on ``task_id`` with metadata ``md``."""
    if op == "get":
        return stub.GetTask(pb.GetTaskRequest(id=task_id), metadata=md)
    if op == "logs":
        return stub.GetTaskLogs(pb.GetTaskLogsRequest(task_id=task_id), metadata=md)
    if op == "events":
        return stub.GetTaskEvents(pb.GetTaskEventsRequest(task_id=task_id), metadata=md)
    if op == "download":
        return stub.GetDownloadUrl(pb.GetDownloadUrlRequest(task_id=task_id), metadata=md)
    if op == "cancel":
        return stub.CancelTask(pb.CancelTaskRequest(id=task_id, reason="table"), metadata=md)
    if op == "retry":
        return stub.RetryTask(pb.RetryTaskRequest(id=task_id), metadata=md)
    if op == "retry_failed_rows":
        return stub.RetryFailedRows(pb.RetryFailedRowsRequest(id=task_id), metadata=md)
    if op == "delete":
        return stub.DeleteTask(pb.DeleteTaskRequest(id=task_id), metadata=md)
    assert op == "progress"
    report = pb.UpdateTaskProgressRequest(task_id=task_id, total_records=10, processed_records=1)
    return stub.UpdateTaskProgress(report, metadata=md)


async def outcome(op: str, rpc: Awaitable[object]) -> str:
    """ok / 403 / 404, or what else came back."""
    try:
        await rpc
    except grpc.aio.AioRpcError as err:
        code = error_code(err)
        if err.code() is grpc.StatusCode.NOT_FOUND and code == "TASK_NOT_FOUND":
            return HIDDEN
        if err.code() is grpc.StatusCode.PERMISSION_DENIED and code == "PERMISSION_DENIED":
            return DENIED
        if ALLOWED_FAILURE.get(op) == code:
            return OK
        return f"{err.code().name} {code}: {err.details()}"
    return OK if op not in ALLOWED_FAILURE else "succeeded unexpectedly"


@pytest.mark.parametrize("role", ROLES)
async def test_the_table(stub: OperationsServiceAsyncStub, runtime: Runtime, role: str) -> None:
    """Every RPC × own / another's / an unreported type's task gives the table's answer."""
    who = cast(role)
    md = metadata(who.subject, roles_of(role))
    actual: dict[str, dict[str, str]] = {op: {} for op in OPS}
    for whose in WHOSE:
        for op in OPS:
            task = await prepared(runtime, who, whose, op)
            actual[op][whose] = await outcome(op, call(stub, op, str(task.id), md))
    assert differences(actual, EXPECTED[role]) == []


@pytest.mark.parametrize("role", ROLES)
async def test_create_and_list(stub: OperationsServiceAsyncStub, runtime: Runtime, role: str) -> None:
    """Who may name another requester, and whose tasks a requester filter shows."""
    who = cast(role)
    md = metadata(who.subject, roles_of(role))
    created = {}
    for whose, requested_by in (("own", ""), ("other", who.stranger)):
        request = pb.CreateTaskRequest(task_type="process", entity_type="product", requested_by=requested_by)
        created[whose] = await outcome("create", stub.CreateTask(request, metadata=md))
    assert created == EXPECTED_CREATE[role]

    others = {
        "other": await prepared(runtime, who, "other", "get"),
        "unreported": await prepared(runtime, who, "unreported", "get"),
    }
    page = await stub.ListTasks(pb.ListTasksRequest(requested_by=who.stranger, page_size=100), metadata=md)
    seen = {t.id for t in page.tasks}
    assert {whose for whose, task in others.items() if str(task.id) in seen} == EXPECTED_LIST[role]


async def test_no_cross_principal_read(stub: OperationsServiceAsyncStub, runtime: Runtime) -> None:
    """Another user's task is answered exactly like a missing one, on every read and in lists."""
    alice, bob = cast("user"), cast("user")
    task = await prepared(runtime, alice, "own", "get")
    missing = str(uuid.uuid4())
    md = metadata(bob.subject)
    files = ("output", "result", "input")

    def requests(i: str) -> list[Awaitable[object]]:
        return [
            stub.GetTask(pb.GetTaskRequest(id=i), metadata=md),
            stub.GetTaskLogs(pb.GetTaskLogsRequest(task_id=i), metadata=md),
            stub.GetTaskEvents(pb.GetTaskEventsRequest(task_id=i), metadata=md),
            *(stub.GetDownloadUrl(pb.GetDownloadUrlRequest(task_id=i, file=f), metadata=md) for f in files),
        ]

    for of_hidden, of_missing in zip(requests(str(task.id)), requests(missing), strict=True):
        hidden = await expect_error(of_hidden, grpc.StatusCode.NOT_FOUND, "TASK_NOT_FOUND")
        absent = await expect_error(of_missing, grpc.StatusCode.NOT_FOUND, "TASK_NOT_FOUND")
        assert (hidden.details() or "").replace(str(task.id), missing) == absent.details()
        assert dict(hidden.trailing_metadata() or ()).keys() == dict(absent.trailing_metadata() or ()).keys()
    listed = await stub.ListTasks(pb.ListTasksRequest(requested_by=alice.subject), metadata=md)
    assert (list(listed.tasks), listed.total) == ([], 0)


async def test_reports_come_only_from_reporters(stub: OperationsServiceAsyncStub, runtime: Runtime) -> None:
    """An end user's report on its own task: 403, task unchanged; the type's reporter: accepted."""
    alice = metadata(f"user-{uuid.uuid4().hex[:8]}")
    created = await stub.CreateTask(pb.CreateTaskRequest(task_type=NARROW, entity_type="p"), metadata=alice)
    task_id = created.task.id
    done = pb.UpdateTaskProgressRequest(
        task_id=task_id, total_records=1, processed_records=1, success_records=1, is_completed=True
    )
    err = await expect_error(
        stub.UpdateTaskProgress(done, metadata=alice), grpc.StatusCode.PERMISSION_DENIED, "PERMISSION_DENIED"
    )
    assert "an end user can never complete a task with a report" in (err.details() or "")
    unchanged = (await stub.GetTask(pb.GetTaskRequest(id=task_id), metadata=alice)).task
    assert (unchanged.status, unchanged.processed_records) == ("pending", 0)

    stranger = metadata(f"svc-{uuid.uuid4().hex[:8]}", ["service"])
    await expect_error(
        stub.UpdateTaskProgress(done, metadata=stranger), grpc.StatusCode.NOT_FOUND, "TASK_NOT_FOUND"
    )
    reporter = metadata(NARROW_REPORTER, ["service"])
    accepted = await stub.UpdateTaskProgress(done, metadata=reporter)
    assert accepted.task.status == "completed"


async def test_a_service_creates_on_behalf_of_a_user(
    stub: OperationsServiceAsyncStub, runtime: Runtime
) -> None:
    """requestedBy names the user; the created event says who acted for whom; a user may not."""
    tag = uuid.uuid4().hex[:8]
    svc, user = f"svc-{tag}", f"user-{tag}"
    request = pb.CreateTaskRequest(task_type="process", entity_type="p", requested_by=user)
    task = (await stub.CreateTask(request, metadata=metadata(svc, ["service"]))).task
    assert task.requested_by == user
    events = await stub.GetTaskEvents(pb.GetTaskEventsRequest(task_id=task.id), metadata=metadata(user))
    payload = MessageToDict(events.events[0].payload)
    assert (payload["onBehalfOf"], payload["createdBy"]) == (user, svc)

    forged = pb.CreateTaskRequest(task_type="process", entity_type="p", requested_by=svc)
    await expect_error(
        stub.CreateTask(forged, metadata=metadata(user)),
        grpc.StatusCode.PERMISSION_DENIED,
        "PERMISSION_DENIED",
    )


async def test_anothers_retry_and_delete_are_audited(
    stub: OperationsServiceAsyncStub, runtime: Runtime
) -> None:
    """task.retry when an operator retries a user's task; task.delete when an admin deletes it."""
    alice = cast("user")
    failed = await prepared(runtime, alice, "own", "retry")
    operator = f"op-{uuid.uuid4().hex[:8]}"
    await stub.RetryTask(pb.RetryTaskRequest(id=str(failed.id)), metadata=metadata(operator, ["operator"]))
    actions = [(r["actor"], r["action"]) for r in await audit_rows(runtime, str(failed.id))]
    assert actions == [(operator, "task.retry")]

    final = await prepared(runtime, alice, "own", "delete")
    admin = f"admin-{uuid.uuid4().hex[:8]}"
    await stub.DeleteTask(pb.DeleteTaskRequest(id=str(final.id)), metadata=metadata(admin, ["admin"]))
    actions = [(r["actor"], r["action"]) for r in await audit_rows(runtime, str(final.id))]
    assert actions[-1] == (admin, "task.delete")
