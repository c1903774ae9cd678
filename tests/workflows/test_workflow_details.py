"""The Temporal Web UI tells a task's story: static summary and details, live current details.

Read the way the Web UI reads them, against the real dev server: the static summary and details
from DescribeWorkflowExecution (the workflow's user metadata), the current details from the
built-in ``__temporal_workflow_metadata`` query.
"""

from __future__ import annotations

import uuid

from temporalio.api.sdk.v1 import WorkflowMetadata
from temporalio.client import WorkflowHandle
from temporalio.worker import Worker

from common_operations.bootstrap import Runtime
from common_operations.domain.principal import Principal
from common_operations.domain.status import TaskStatus
from common_operations.domain.task import CreateTask, ProgressReport, RecordCounts
from common_operations.domain.workflow_details import current_details
from common_operations.domain.workflow_types import workflow_id_for
from tests.helpers import assert_eventually

SERVICE = Principal("catalog-service", frozenset({"service"}))


def _handle(runtime: Runtime, task_id: uuid.UUID) -> WorkflowHandle[object, object]:
    return runtime.client.get_workflow_handle(workflow_id_for(str(task_id)))


async def _current_details(runtime: Runtime, task_id: uuid.UUID) -> str:
    """What the Web UI's workflow page shows as the current details."""
    metadata = await _handle(runtime, task_id).query(
        "__temporal_workflow_metadata", result_type=WorkflowMetadata
    )
    details: str = metadata.current_details
    return details


async def test_a_started_workflow_carries_a_static_summary_and_details(
    runtime: Runtime, worker: Worker
) -> None:
    task = await runtime.tasks.create_task(
        SERVICE, CreateTask("process", "product", "catalog-team", params={"secretSauce": "do-not-show"})
    )

    description = await _handle(runtime, task.id).describe()

    assert await description.static_summary() == "process of product for catalog-team"
    details = await description.static_details()
    assert details is not None
    assert f"**Task** `{task.id}`" in details
    assert "**Type** `process` (external)" in details
    assert "**Entity** `product`" in details
    assert "**Requested by** `catalog-team`" in details
    # The summary is a description of the task, never its params.
    assert "do-not-show" not in details


async def test_current_details_follow_progress_and_the_end(runtime: Runtime, worker: Worker) -> None:
    task = await runtime.tasks.create_task(SERVICE, CreateTask("process", "product", "details-test"))

    assert (await _current_details(runtime, task.id)).startswith("**Status** pending")

    await runtime.tasks.update_progress(
        SERVICE,
        task.id,
        ProgressReport(total_records=200, processed_records=50, success_records=48, failed_records=2),
    )
    details = await _current_details(runtime, task.id)
    assert details.startswith("**Status** processing · 25 %")
    assert "**Records** 50 / 200 processed (48 ok, 2 failed)" in details

    # A plain progress report (no status change) updates them too, with its message.
    await runtime.tasks.update_progress(
        SERVICE,
        task.id,
        ProgressReport(
            processed_records=150, success_records=148, failed_records=2, message="batch 3 of 4 done"
        ),
    )
    details = await _current_details(runtime, task.id)
    assert details.startswith("**Status** processing · 75 %")
    assert "**Records** 150 / 200 processed (148 ok, 2 failed)" in details
    assert "**Last message** batch 3 of 4 done" in details

    await runtime.tasks.update_progress(
        SERVICE, task.id, ProgressReport(processed_records=200, success_records=198, is_completed=True)
    )
    # A closed workflow still answers queries (replayed by the worker), as the Web UI asks them.
    await assert_eventually(
        lambda: _current_details(runtime, task.id),
        lambda d: d.startswith("**Status** completed · 100 %"),
    )


async def test_a_failed_task_shows_its_error() -> None:
    details = current_details(
        TaskStatus.FAILED,
        RecordCounts(total=10, processed=4, success=3, failed=1),
        message="worker failed: disk full",
        error="disk\nfull",
        retry_count=1,
        max_retries=3,
    )
    assert details.splitlines() == [
        "**Status** failed · 40 %",
        "**Records** 4 / 10 processed (3 ok, 1 failed)",
        "**Retry** 1 of 3",
        "**Error** disk full",
        "**Last message** worker failed: disk full",
    ]
