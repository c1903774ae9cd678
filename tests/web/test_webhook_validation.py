"""CreateTask refuses a callbackUrl that could reach internal addresses (REST 400, gRPC INVALID_ARGUMENT).

Every URL here is refused before any connection: IP literals and numeric forms need no name
server, ``localhost`` resolves from the hosts file, and malformed URLs never reach resolution.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import grpc
import grpc.aio
import pytest
from temporalio.worker import Worker

from common_operations.bootstrap import Runtime
from common_operations.config import Settings, WebhookSettings
from common_operations.grpc.server import build_server
from common_operations.grpc.v1 import operations_pb2 as pb
from common_operations.grpc.v1 import operations_pb2_grpc
from tests.grpc_api.support import ALICE, expect_error
from tests.web.support import TASKS, Client, assert_problem, caller, create

if TYPE_CHECKING:
    from common_operations.grpc.v1.operations_pb2_grpc import OperationsServiceAsyncStub

REFUSED = [
    pytest.param("http://127.0.0.1/hook", id="loopback"),
    pytest.param("http://127.0.0.1:8000/hook", id="loopback-port"),
    pytest.param("http://10.0.0.1/hook", id="private"),
    pytest.param("http://192.168.1.10/hook", id="private-192"),
    pytest.param("http://169.254.169.254/latest/meta-data/", id="metadata"),
    pytest.param("http://100.64.0.1/", id="cgnat"),
    pytest.param("http://0.0.0.0:8080/", id="unspecified"),
    pytest.param("http://[::1]/hook", id="ipv6-loopback"),
    pytest.param("http://[::ffff:127.0.0.1]/hook", id="ipv4-mapped"),
    pytest.param("http://[fd00::1]/hook", id="ipv6-unique-local"),
    pytest.param("http://localhost:8080/hook", id="localhost-name"),
    pytest.param("http://0x7f000001/hook", id="hex-ip"),
    pytest.param("http://2130706433/hook", id="decimal-ip"),
    pytest.param("file:///etc/passwd", id="file-scheme"),
    pytest.param("gopher://example.com/", id="gopher-scheme"),
    pytest.param("http://user:pw@example.com/hook", id="credentials"),
    pytest.param("https://example.com/" + "a" * 2100, id="too-long"),
    pytest.param("not a url", id="not-a-url"),
]


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """Webhooks configured (a secret) with the default address rules."""
    settings.webhooks = WebhookSettings(secret="test-secret")
    return settings


@pytest.fixture
async def stub(runtime: Runtime, worker: Worker) -> AsyncIterator[OperationsServiceAsyncStub]:
    """A client of a real gRPC server on this test's runtime."""
    server, port = await build_server(runtime, "127.0.0.1", 0)
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            yield operations_pb2_grpc.OperationsServiceStub(channel)
    finally:
        await server.stop(grace=None)


async def _tasks_of(api: Client, who: str) -> int:
    resp = await api.get(TASKS, params={"requestedBy": who})
    assert resp.status_code == 200, resp.text
    return int(resp.json()["total"])


@pytest.mark.parametrize("url", REFUSED)
async def test_rest_refuses_the_callback_url(api: Client, who: str, url: str) -> None:
    resp = await api.post(TASKS, json={"taskType": "process", "callbackUrl": url}, headers=caller(who))
    problem = assert_problem(resp, 400, "VALIDATION_FAILED")
    assert (
        "callbackUrl" in {e.get("field") for e in problem.get("errors", [])}
        or problem.get("field") == "callbackUrl"
    ), problem
    assert await _tasks_of(api, who) == 0  # refused before anything was written


@pytest.mark.parametrize(
    "url",
    ["http://127.0.0.1/hook", "http://169.254.169.254/", "http://[::1]/", "file:///etc/passwd"],
)
async def test_grpc_refuses_the_callback_url(stub: OperationsServiceAsyncStub, url: str) -> None:
    call = stub.CreateTask(
        pb.CreateTaskRequest(task_type="process", entity_type="product", callback_url=url), metadata=ALICE
    )
    err = await expect_error(call, grpc.StatusCode.INVALID_ARGUMENT, "VALIDATION_FAILED")
    assert "callbackUrl" in (err.details() or "")


async def test_a_callback_url_needs_a_webhook_secret(api: Client, runtime: Runtime, who: str) -> None:
    runtime.settings.webhooks.secret = None
    resp = await api.post(
        TASKS, json={"taskType": "process", "callbackUrl": "https://example.com/hook"}, headers=caller(who)
    )
    problem = assert_problem(resp, 400, "VALIDATION_FAILED")
    assert "webhooks are not configured" in problem["detail"]


async def test_an_allowed_host_is_accepted_and_shown(api: Client, runtime: Runtime, who: str) -> None:
    runtime.settings.webhooks.allowed_hosts = ["127.0.0.1"]
    task = await create(api, who, callbackUrl="http://127.0.0.1:9/hook")
    assert task["callbackUrl"] == "http://127.0.0.1:9/hook"
    # Only the listed host: another loopback spelling stays refused.
    resp = await api.post(
        TASKS, json={"taskType": "process", "callbackUrl": "http://127.0.0.2:9/hook"}, headers=caller(who)
    )
    assert_problem(resp, 400, "VALIDATION_FAILED")


async def test_private_addresses_may_be_allowed_by_configuration(
    api: Client, runtime: Runtime, who: str
) -> None:
    runtime.settings.webhooks.allow_private_addresses = True
    # Loopback, so that nothing could ever leave the machine should the task end and send.
    task = await create(api, who, callbackUrl="http://127.0.0.1:9/private")
    assert task["callbackUrl"] == "http://127.0.0.1:9/private"
    # The scheme and shape rules still hold.
    resp = await api.post(
        TASKS, json={"taskType": "process", "callbackUrl": "file:///etc/passwd"}, headers=caller(who)
    )
    assert_problem(resp, 400, "VALIDATION_FAILED")
