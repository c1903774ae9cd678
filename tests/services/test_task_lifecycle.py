"""TaskService end to end against real Postgres and Temporal (no transport)."""

from __future__ import annotations

from temporalio.worker import Worker

from common_operations.bootstrap import Runtime
from common_operations.domain.principal import Principal
from common_operations.domain.status import TaskStatus
from common_operations.domain.task import CreateTask, PageRequest, ProgressReport

ALICE = Principal("alice", frozenset({"admin"}))


async def test_external_task_reports_progress_and_completes(runtime: Runtime, worker: Worker) -> None:
    svc = runtime.tasks
    task = await svc.create_task(
        ALICE, CreateTask(task_type="process", entity_type="product", requested_by="")
    )
    assert task.status is TaskStatus.PENDING
    assert task.requested_by == "alice"

    task = await svc.update_progress(
        ALICE, task.id, ProgressReport(total_records=10, processed_records=4, success_records=4)
    )
    assert task.status is TaskStatus.PROCESSING
    assert task.progress_percentage == 40.0
    assert task.started_at is not None

    snapshot = await runtime.workflows.progress(str(task.id))
    assert snapshot.processed_records == 4 and snapshot.status == "processing"

    task = await svc.update_progress(
        ALICE,
        task.id,
        ProgressReport(processed_records=10, success_records=9, failed_records=1, is_completed=True),
    )
    assert task.status is TaskStatus.COMPLETED
    assert task.counts.failed == 1 and task.progress_percentage == 100.0
    assert task.completed_at is not None

    events = await svc.task_events(ALICE, task.id, PageRequest())
    assert [e.event_type for e in events.items] == ["task.created", "task.started", "task.completed"]
    assert [e.seq for e in events.items] == [0, 1, 2]
    logs = await svc.task_logs(ALICE, task.id, PageRequest())
    assert len(logs.items) == 3
