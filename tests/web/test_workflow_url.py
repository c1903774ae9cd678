"""Every task in REST and gRPC carries ``workflowUrl``, its workflow's page in the Temporal Web UI."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import grpc.aio
import pytest

from common_operations.bootstrap import Runtime
from common_operations.config import Settings
from common_operations.grpc.server import build_server
from common_operations.grpc.v1 import operations_pb2 as pb
from common_operations.grpc.v1 import operations_pb2_grpc
from common_operations.infra import temporal_ui
from common_operations.infra.temporal_ui import WorkflowLinks
from tests.web.support import TASKS, Client, create, eventually_status, get, reported

UI = "http://temporal-ui.example:8080/"


@pytest.fixture
def settings(settings: Settings) -> Iterator[Settings]:
    """This module's runtimes link to a Web UI (the base URL given with a trailing slash)."""
    settings.temporal.ui_base_url = UI
    yield settings
    # The links are a process-wide setting: leave none behind for the next test's app.
    temporal_ui.configure(None, "default")


def _expected(runtime: Runtime, task_id: str) -> str:
    namespace = runtime.settings.temporal.namespace
    return f"http://temporal-ui.example:8080/namespaces/{namespace}/workflows/task-{task_id}"


async def test_rest_tasks_link_to_their_workflow(api: Client, runtime: Runtime, who: str) -> None:
    created = await create(api, who, entityType="product", requestedBy=who)
    url = _expected(runtime, created["id"])
    assert created["workflowUrl"] == url

    assert (await get(api, created["id"]))["workflowUrl"] == url
    assert (await reported(api, created["id"], totalRecords=4, processedRecords=1))["workflowUrl"] == url
    listed = (await api.get(TASKS, params={"requestedBy": who})).json()["tasks"]
    assert [t["workflowUrl"] for t in listed] == [url]
    await reported(api, created["id"], processedRecords=4, isCompleted=True)
    assert (await eventually_status(api, created["id"], "completed"))["workflowUrl"] == url


async def test_grpc_tasks_link_to_their_workflow(runtime: Runtime, api: Client) -> None:
    server, port = await build_server(runtime, "127.0.0.1", 0)
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = operations_pb2_grpc.OperationsServiceStub(channel)
            created = await stub.CreateTask(
                pb.CreateTaskRequest(task_type="process", entity_type="product", requested_by="grpc-link")
            )
            url = _expected(runtime, created.task.id)
            assert created.task.workflow_url == url
            fetched = await stub.GetTask(pb.GetTaskRequest(id=created.task.id))
            assert fetched.task.workflow_url == url
    finally:
        await server.stop(grace=None)


def test_no_base_url_no_link() -> None:
    assert WorkflowLinks(None, "default").workflow_url("0b6b8ad2-5d5f-4a52-9d44-1c1f4a3c2d10") is None
    assert WorkflowLinks("", "default").workflow_url("0b6b8ad2-5d5f-4a52-9d44-1c1f4a3c2d10") is None


def test_segments_are_percent_encoded_as_the_web_ui_expects() -> None:
    links = WorkflowLinks("https://temporal.internal/ui", "team a/ns")
    assert (
        links.workflow_url("0b6b8ad2-5d5f-4a52-9d44-1c1f4a3c2d10")
        == "https://temporal.internal/ui/namespaces/team%20a%2Fns/workflows/task-0b6b8ad2-5d5f-4a52-9d44-1c1f4a3c2d10"
    )


@pytest.fixture
async def unlinked_api(api: Client) -> AsyncIterator[Client]:
    """The module's app, after the process's links were reset (as without temporal.ui_base_url)."""
    temporal_ui.configure(None, "default")
    yield api


async def test_without_a_configured_ui_the_rest_link_is_null(unlinked_api: Client, who: str) -> None:
    created = await create(unlinked_api, who, entityType="product", requestedBy=who)
    assert created["workflowUrl"] is None
