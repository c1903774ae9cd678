"""Rate limits and the unfinished-task cap through gRPC: RESOURCE_EXHAUSTED with the stable code and
``retry-after`` metadata, progress buckets per task, and a cancel freeing a slot."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

import grpc
import pytest

from common_operations.bootstrap import Runtime
from common_operations.config import LimitSettings, RateLimit
from common_operations.grpc.v1 import operations_pb2 as pb
from common_operations.infra.cache import connect_for_caches
from common_operations.infra.rate_limit import RateLimiter
from common_operations.services.limits import QUOTA_RETRY_AFTER, TaskLimits
from tests.auth_support import metadata
from tests.grpc_api.support import expect_error

if TYPE_CHECKING:
    from common_operations.grpc.v1.operations_pb2_grpc import OperationsServiceAsyncStub

GENEROUS = RateLimit(requests=1000, per_seconds=60)
# A token every 30 s: no loaded machine refills one between two calls of a test.
TWO_PER_MINUTE = RateLimit(requests=2, per_seconds=60)

Install = Callable[..., TaskLimits]
Metadata = tuple[tuple[str, str], ...]


@pytest.fixture
async def install_limits(runtime: Runtime, redis_url: str) -> AsyncIterator[Install]:
    """Enable limits on the test runtime's task service (the session's settings have them off)."""
    previous = runtime.tasks.limits
    client = connect_for_caches(redis_url)

    def install(**overrides: Any) -> TaskLimits:
        rates = dict.fromkeys(("create", "progress", "read", "change", "admin"), GENEROUS)
        rates.update(overrides.pop("rates", {}))
        values: dict[str, Any] = {"enabled": True, "rates": rates, "max_unfinished_tasks": None}
        values.update(overrides)
        limits = TaskLimits(
            LimitSettings.model_validate(values),
            limiter=RateLimiter(client, prefix=f"co-test:{uuid.uuid4().hex[:8]}:rl:"),
            tasks=runtime.repository,
        )
        runtime.tasks.limits = limits
        return limits

    yield install
    runtime.tasks.limits = previous
    await client.aclose()


def someone(*roles: str) -> Metadata:
    return metadata(f"grpc-limits-{uuid.uuid4().hex[:10]}", roles)


async def create(stub: OperationsServiceAsyncStub, who: Metadata) -> str:
    request = pb.CreateTaskRequest(task_type="process", entity_type="product")
    return (await stub.CreateTask(request, metadata=who)).task.id


def retry_after(err: grpc.aio.AioRpcError) -> int:
    return int(dict(err.trailing_metadata() or ())["retry-after"])


async def test_over_the_limit_is_resource_exhausted_with_retry_after(
    stub: OperationsServiceAsyncStub, install_limits: Install
) -> None:
    install_limits(rates={"read": TWO_PER_MINUTE})
    user = someone()
    task_id = await create(stub, user)
    for _ in range(2):
        await stub.GetTask(pb.GetTaskRequest(id=task_id), metadata=user)
    err = await expect_error(
        stub.GetTask(pb.GetTaskRequest(id=task_id), metadata=user),
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "RATE_LIMITED",
    )
    assert 0 < retry_after(err) <= 30
    assert "at most 2 per 60 s" in (err.details() or "")
    # Another caller's reads have their own bucket.
    other = someone("operator")
    await stub.GetTask(pb.GetTaskRequest(id=task_id), metadata=other)


async def test_progress_reports_are_limited_per_task(
    stub: OperationsServiceAsyncStub, install_limits: Install
) -> None:
    install_limits(rates={"progress": TWO_PER_MINUTE})
    worker = someone("service")
    first, second = await create(stub, worker), await create(stub, worker)

    def report(task_id: str, processed: int) -> Any:
        request = pb.UpdateTaskProgressRequest(task_id=task_id, total_records=10, processed_records=processed)
        return stub.UpdateTaskProgress(request, metadata=worker)

    await report(first, 1)
    await report(first, 2)
    err = await expect_error(report(first, 9), grpc.StatusCode.RESOURCE_EXHAUSTED, "RATE_LIMITED")
    assert retry_after(err) > 0
    await report(second, 1)
    await report(second, 2)
    task = (await stub.GetTask(pb.GetTaskRequest(id=first), metadata=worker)).task
    assert task.processed_records == 2


async def test_the_unfinished_cap_is_quota_exceeded_and_a_cancel_frees_a_slot(
    stub: OperationsServiceAsyncStub, install_limits: Install
) -> None:
    install_limits(max_unfinished_tasks=2)
    user = someone()
    first = await create(stub, user)
    await create(stub, user)
    err = await expect_error(create(stub, user), grpc.StatusCode.RESOURCE_EXHAUSTED, "QUOTA_EXCEEDED")
    assert "has 2 unfinished tasks" in (err.details() or "")
    assert retry_after(err) == int(QUOTA_RETRY_AFTER)

    cancelled = await stub.CancelTask(pb.CancelTaskRequest(id=first, reason="make room"), metadata=user)
    assert cancelled.task.status == "cancelled"
    assert await create(stub, user)
