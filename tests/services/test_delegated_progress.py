"""A delegated activity may report progress through UpdateTaskProgress while it runs."""

from __future__ import annotations

import uuid

from temporalio import activity
from temporalio.worker import Worker

from common_operations.bootstrap import Runtime
from common_operations.domain.errors import ValidationFailed
from common_operations.domain.principal import Principal
from common_operations.domain.status import TaskStatus
from common_operations.domain.task import CreateTask, PageRequest, ProgressReport
from common_operations.domain.workflow_types import DelegatedTaskInput, DelegatedTaskResult
from tests.helpers import assert_eventually

# An admin: delegated types name no reporters, and these reports are the point of the test.
SERVICE = Principal("catalog-service", frozenset({"admin"}))


async def test_delegated_activity_reports_progress_then_completes(
    runtime: Runtime, worker: Worker, delegate_queue: str
) -> None:
    seen: list[float] = []
    refused: list[str] = []

    @activity.defn(name="echo_task")
    async def reindex(inp: DelegatedTaskInput) -> DelegatedTaskResult:
        # The other service reports as an external worker would (here through the service layer).
        task_id = uuid.UUID(inp.task_id)
        for done in (25, 50, 75):
            task = await runtime.tasks.update_progress(
                SERVICE,
                task_id,
                ProgressReport(total_records=100, processed_records=done, success_records=done),
            )
            seen.append(task.progress_percentage)
            activity.heartbeat(done)
        try:
            await runtime.tasks.update_progress(SERVICE, task_id, ProgressReport(is_completed=True))
        except ValidationFailed as err:
            refused.append(err.message)
        return DelegatedTaskResult(processed_records=100, success_records=100, message="reindexed")

    async with Worker(runtime.client, task_queue=delegate_queue, activities=[reindex]):
        task = await runtime.tasks.create_task(SERVICE, CreateTask("delegated_echo", "product", ""))

        done = await assert_eventually(
            lambda: runtime.tasks.get_task(SERVICE, task.id), lambda t: t.status.is_closed
        )
    assert done.status is TaskStatus.COMPLETED
    assert seen == [25.0, 50.0, 75.0]
    assert done.counts.processed == 100 and done.progress_percentage == 100.0
    # Completion belongs to the activity's return, not to a report.
    assert refused and "isCompleted" in refused[0]
    events = [e.event_type for e in (await runtime.tasks.task_events(SERVICE, task.id, PageRequest())).items]
    # Reports are coalesced (at most one task.progress per progress_interval); the counts of the
    # last one always reach the mirror (here with the completion).
    assert events[:2] == ["task.created", "task.started"] and events[-1] == "task.completed"
    assert set(events[2:-1]) <= {"task.progress"} and len(events) <= 6
