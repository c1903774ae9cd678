"""gRPC in ``required`` auth mode: the same credentials and refusals as REST, as gRPC statuses.

Bad or missing credentials are UNAUTHENTICATED with the ``error-code`` trailer UNAUTHENTICATED; the
metadata keys are the HTTP header names (``authorization``, ``x-api-key``).
"""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from common_operations.bootstrap import Runtime
from common_operations.config import AuthSettings, Settings
from common_operations.domain.principal import Principal
from common_operations.grpc.v1 import operations_pb2 as pb
from tests.auth_support import BAD_TOKENS, auth_settings, metadata
from tests.grpc_api.support import expect_error

ADMIN = Principal("grpc-test-admin", frozenset({"admin"}), via="internal")


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """The test settings in required mode."""
    settings.auth = AuthSettings(**auth_settings("required"))
    return settings


async def unauthenticated(call: Any, reason: str) -> None:
    err = await expect_error(call, grpc.StatusCode.UNAUTHENTICATED, "UNAUTHENTICATED")
    assert reason in (err.details() or ""), err.details()


@pytest.mark.parametrize("name", list(BAD_TOKENS))
async def test_bad_tokens_are_unauthenticated(stub: Any, name: str) -> None:
    make, reason = BAD_TOKENS[name]
    bad = make()
    md = (("authorization", f"Bearer {bad}"),)
    await unauthenticated(stub.ListTasks(pb.ListTasksRequest(), metadata=md), reason)
    await unauthenticated(stub.CreateTask(pb.CreateTaskRequest(task_type="process"), metadata=md), reason)


async def test_without_credentials_the_operations_are_refused_but_health_answers(
    stub: Any, channel: grpc.aio.Channel
) -> None:
    await unauthenticated(stub.ListTasks(pb.ListTasksRequest()), "credentials are required")
    await unauthenticated(
        stub.CreateTask(pb.CreateTaskRequest(task_type="process")), "credentials are required"
    )
    await unauthenticated(
        stub.ListTasks(pb.ListTasksRequest(), metadata=(("x-user-id", "admin"),)), "credentials are required"
    )
    # typeshed's HealthStub declares no methods.
    health: Any = health_pb2_grpc.HealthStub(channel)
    answer = await health.Check(health_pb2.HealthCheckRequest(service=""))
    assert answer.status == health_pb2.HealthCheckResponse.SERVING


async def test_a_valid_token_is_the_caller(stub: Any) -> None:
    created = await stub.CreateTask(
        pb.CreateTaskRequest(task_type="process", entity_type="product"), metadata=metadata("alice-grpc")
    )
    assert created.task.requested_by == "alice-grpc"


async def test_a_token_and_an_api_key_together_are_refused(stub: Any) -> None:
    md = (*metadata("alice", ["admin"]), ("x-api-key", "co_0123456789ab_" + "A" * 43))
    await unauthenticated(stub.ListTasks(pb.ListTasksRequest(), metadata=md), "not both")


async def test_api_keys_work_and_revoked_expired_tampered_ones_do_not(
    stub: Any, runtime: Runtime, pool: Any
) -> None:
    created = await runtime.api_keys.create(ADMIN, "catalog-grpc", ["service"])
    key = created.key
    answer = await stub.CreateTask(
        pb.CreateTaskRequest(task_type="process", entity_type="product"), metadata=(("x-api-key", key),)
    )
    assert answer.task.requested_by == "catalog-grpc"
    # The service may report progress on its task (reporters "*").
    report = pb.UpdateTaskProgressRequest(task_id=answer.task.id, total_records=10, processed_records=1)
    reported = await stub.UpdateTaskProgress(report, metadata=(("x-api-key", key),))
    assert reported.task.processed_records == 1

    tampered = key[:-1] + ("A" if key[-1] != "A" else "B")
    await unauthenticated(
        stub.ListTasks(pb.ListTasksRequest(), metadata=(("x-api-key", tampered),)), "unknown"
    )

    await pool.execute(
        "UPDATE api_keys SET expires_at = now() - interval '1 second' WHERE id = $1", created.record.id
    )
    await unauthenticated(stub.ListTasks(pb.ListTasksRequest(), metadata=(("x-api-key", key),)), "expired")
    await pool.execute("UPDATE api_keys SET expires_at = NULL WHERE id = $1", created.record.id)
    await stub.ListTasks(pb.ListTasksRequest(), metadata=(("x-api-key", key),))

    await runtime.api_keys.revoke(ADMIN, created.record.prefix)
    await unauthenticated(stub.ListTasks(pb.ListTasksRequest(), metadata=(("x-api-key", key),)), "revoked")
