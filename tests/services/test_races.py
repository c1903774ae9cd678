"""Races that must not corrupt a task: the API's final state equals its workflow's, nothing lost.

Each test drives a race through the real service, reconciler and Temporal, then checks the task as
the API shows it against the workflow (status, counts) and its event history (one sequence number
per event, no gaps, nothing twice).
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from temporalio.client import WorkflowExecutionStatus
from temporalio.worker import Worker

from common_operations.bootstrap import Runtime
from common_operations.domain.errors import InvalidTransition, ServiceUnavailable, TaskNotFound
from common_operations.domain.principal import Principal
from common_operations.domain.status import TaskStatus
from common_operations.domain.task import CreateTask, PageRequest, ProgressReport, Task
from common_operations.domain.workflow_types import TaskWorkflowInput, workflow_id_for
from common_operations.services.reconciler import Reconciler
from common_operations.services.runs import workflow_input
from common_operations.worker import build_worker
from tests.helpers import assert_eventually

WHO = Principal("race-test", frozenset({"admin"}))
TEMPORAL_STATUS = {
    WorkflowExecutionStatus.COMPLETED: TaskStatus.COMPLETED,
    WorkflowExecutionStatus.FAILED: TaskStatus.FAILED,
    WorkflowExecutionStatus.CANCELED: TaskStatus.CANCELLED,
    WorkflowExecutionStatus.TERMINATED: TaskStatus.FAILED,
}


async def _runs(runtime: Runtime, task_id: uuid.UUID) -> list[WorkflowExecutionStatus | None]:
    statuses = []
    async for execution in runtime.client.list_workflows(f"WorkflowId = '{workflow_id_for(str(task_id))}'"):
        statuses.append(execution.status)
    return statuses


async def assert_runs(runtime: Runtime, task_id: uuid.UUID, expected: list[WorkflowExecutionStatus]) -> None:
    """The task's workflow had exactly these runs (visibility lags a little behind closes)."""
    await assert_eventually(lambda: _runs(runtime, task_id), lambda runs: runs == expected)


async def assert_consistent(runtime: Runtime, task_id: uuid.UUID) -> Task:
    """The API's task equals its workflow's end (or live state), and its history has no gap."""
    task = await runtime.tasks.get_task(WHO, task_id)
    info = await runtime.workflows.describe(str(task_id))
    assert info is not None
    if info.running:
        snapshot = await runtime.workflows.progress(str(task_id))
        assert snapshot.status == task.status.value
        assert snapshot.processed_records == task.counts.processed
    else:
        assert info.status is not None and TEMPORAL_STATUS[info.status] is task.status, (info, task)
    events = (await runtime.tasks.task_events(WHO, task_id, PageRequest(page_size=1000))).items
    assert [e.seq for e in events] == list(range(len(events))), [(e.seq, e.event_type) for e in events]
    assert events[-1].status is task.status
    return task


async def _inserted_before_a_crash(runtime: Runtime, minutes_ago: float = 0) -> Task:
    """A task row whose workflow was never started (the process died in between)."""
    at = datetime.now(UTC) - timedelta(minutes=minutes_ago)
    task = Task(
        id=uuid.uuid4(),
        task_type="process",
        entity_type="product",
        status=TaskStatus.PENDING,
        requested_by="race-test",
        created_at=at,
        updated_at=at,
    )
    await runtime.repository.insert_task(task, "created before a crash")
    return task


async def test_cancel_between_insert_and_start(runtime: Runtime, worker: Worker) -> None:
    task = await _inserted_before_a_crash(runtime)
    cancelled = await runtime.tasks.cancel_task(WHO, task.id, "customer withdrew the order")
    assert cancelled.status is TaskStatus.CANCELLED
    # The creator comes back and starts the workflow late: it starts nothing new.
    assert await runtime.tasks.runs.ensure_started(task) is None
    await assert_runs(runtime, task.id, [WorkflowExecutionStatus.CANCELED])
    final = await assert_consistent(runtime, task.id)
    events = (await runtime.tasks.task_events(WHO, task.id, PageRequest())).items
    assert [e.event_type for e in events] == ["task.created", "task.cancelled"]
    assert "customer withdrew the order" in (events[-1].payload["message"])
    assert final.completed_at is not None


async def test_a_start_that_errors_after_temporal_accepted_it(
    runtime: Runtime, worker: Worker, monkeypatch: pytest.MonkeyPatch
) -> None:
    start = runtime.workflows.start

    async def lost_answer(inp: TaskWorkflowInput, *, new_attempt: bool = False) -> str:
        await start(inp, new_attempt=new_attempt)
        raise ServiceUnavailable("Temporal request failed: deadline exceeded")

    monkeypatch.setattr(runtime.workflows, "start", lost_answer)
    task = await runtime.tasks.create_task(WHO, CreateTask("process", "product", "lost-answer"))
    monkeypatch.undo()
    # Not marked failed: the run exists and works, the task says what it is.
    assert task.status is TaskStatus.PENDING
    # The reconciler adopts the run rather than starting a second one.
    report = (
        await Reconciler(runtime.repository, runtime.workflows, runtime.settings.operations).run_once()
    ).report
    assert report.started == 0
    await runtime.tasks.update_progress(WHO, task.id, ProgressReport(total_records=2, processed_records=1))
    done = await runtime.tasks.update_progress(
        WHO, task.id, ProgressReport(processed_records=2, is_completed=True)
    )
    assert done.status is TaskStatus.COMPLETED
    await assert_runs(runtime, task.id, [WorkflowExecutionStatus.COMPLETED])
    await assert_consistent(runtime, task.id)


async def test_retry_racing_the_reconciler(runtime: Runtime, worker: Worker) -> None:
    svc = runtime.tasks
    task = await svc.create_task(WHO, CreateTask("process", "product", "retry-race"))
    await svc.update_progress(WHO, task.id, ProgressReport(total_records=5, processed_records=1))
    handle = runtime.client.get_workflow_handle(workflow_id_for(str(task.id)))
    await handle.terminate(reason="operator gave up")
    reconcilers = [runtime.reconciler() for _ in range(2)]

    async def retry_until_accepted() -> Task:
        while True:
            try:
                return await svc.retry_task(WHO, task.id)
            except InvalidTransition:  # not failed in the mirror yet: the reconciler is due first
                await asyncio.sleep(0.05)

    async def reconcile_repeatedly() -> None:
        for _ in range(5):
            await asyncio.gather(*(r.run_once() for r in reconcilers))

    retried, _ = await asyncio.gather(retry_until_accepted(), reconcile_repeatedly())
    assert retried.status is TaskStatus.PENDING and retried.retry_count == 1
    await asyncio.gather(*(r.run_once() for r in reconcilers))
    final = await assert_consistent(runtime, task.id)
    assert final.status is TaskStatus.PENDING
    events = [e.event_type for e in (await svc.task_events(WHO, task.id, PageRequest())).items]
    assert events == ["task.created", "task.started", "task.failed", "task.retried"]


async def test_two_reconcilers_record_a_terminated_run_once(runtime: Runtime, worker: Worker) -> None:
    svc = runtime.tasks
    tasks = [
        await svc.create_task(WHO, CreateTask("process", "product", "two-reconcilers")) for _ in range(6)
    ]
    for task in tasks:
        await svc.update_progress(WHO, task.id, ProgressReport(processed_records=1))
        await runtime.client.get_workflow_handle(workflow_id_for(str(task.id))).terminate(reason="cleanup")
    # Visibility lags behind closes (more so on a loaded machine): the passes must all see the six
    # terminated runs, or one pass finding fewer would not be the race this test is about.
    queue = runtime.settings.temporal.task_queue
    terminated = f"TaskQueue = '{queue}' AND ExecutionStatus = 'Terminated'"

    async def visible() -> int:
        return len([run async for run in runtime.workflows.list_runs(terminated)])

    await assert_eventually(visible, lambda n: n >= len(tasks))
    results = await asyncio.gather(*(runtime.reconciler().run_once() for _ in range(3)))
    assert sum(r.report.failed for r in results) == len(tasks)
    for task in tasks:
        final = await assert_consistent(runtime, task.id)
        assert final.status is TaskStatus.FAILED and "cleanup" in (final.error_message or "")
        events = [e.event_type for e in (await svc.task_events(WHO, task.id, PageRequest())).items]
        assert events.count("task.failed") == 1


async def test_delete_racing_a_report(runtime: Runtime, worker: Worker) -> None:
    svc = runtime.tasks
    for _ in range(5):
        task = await svc.create_task(WHO, CreateTask("process", "product", "delete-race"))
        await svc.update_progress(WHO, task.id, ProgressReport(total_records=3, processed_records=1))
        report = svc.update_progress(WHO, task.id, ProgressReport(processed_records=3, is_completed=True))
        outcome = await asyncio.gather(report, svc.delete_task(WHO, task.id), return_exceptions=True)
        done, deleted = outcome
        assert not isinstance(done, BaseException), done  # the report is always answered
        assert deleted is None or isinstance(deleted, InvalidTransition), deleted
        if deleted is None:
            with pytest.raises(TaskNotFound):
                await svc.get_task(WHO, task.id)
            with pytest.raises(TaskNotFound):
                await svc.update_progress(WHO, task.id, ProgressReport(processed_records=3))
        else:
            assert (await assert_consistent(runtime, task.id)).status is TaskStatus.COMPLETED
            await svc.delete_task(WHO, task.id)
        await assert_runs(runtime, task.id, [WorkflowExecutionStatus.COMPLETED])


async def test_two_retries_at_once_retry_once(runtime: Runtime, worker: Worker) -> None:
    svc = runtime.tasks
    task = await svc.create_task(WHO, CreateTask("process", "product", "double-retry"))
    await svc.update_progress(WHO, task.id, ProgressReport(is_completed=True, error_message="boom"))
    outcomes = await asyncio.gather(
        svc.retry_task(WHO, task.id), svc.retry_task(WHO, task.id), return_exceptions=True
    )
    retried = [o for o in outcomes if isinstance(o, Task)]
    assert retried and all(isinstance(o, (Task, InvalidTransition)) for o in outcomes), outcomes
    final = await assert_eventually(
        lambda: svc.get_task(WHO, task.id), lambda t: t.status is TaskStatus.PENDING
    )
    assert final.retry_count == 1
    await assert_consistent(runtime, task.id)
    events = [e.event_type for e in (await svc.task_events(WHO, task.id, PageRequest())).items]
    assert events.count("task.retried") == 1


async def test_a_report_reaching_a_retry_run_before_its_first_task_waits_for_the_retry(
    runtime: Runtime,
) -> None:
    """RetryTask answered, the new run not yet picked up by a worker, and a report already sent:
    the report is applied once the run has recorded the retry (it was refused as "task is failed")."""
    svc = runtime.tasks
    async with build_worker(runtime):
        task = await svc.create_task(WHO, CreateTask(task_type="process", entity_type="e", requested_by=""))
        await svc.update_progress(WHO, task.id, ProgressReport(processed_records=1))
        await svc.update_progress(WHO, task.id, ProgressReport(is_completed=True, error_message="boom"))
        failed = await assert_eventually(
            lambda: svc.get_task(WHO, task.id), lambda t: t.status is TaskStatus.FAILED and t.completed_at
        )
        await assert_eventually(
            lambda: _runs(runtime, task.id),
            lambda runs: runs[-1] is not None and runs[-1] != WorkflowExecutionStatus.RUNNING,
        )
    # No worker now: the retry's run waits for its first task, and the report's Update with it.
    await runtime.workflows.start(
        workflow_input(failed, runtime.settings.operations, retry_message="by test"), new_attempt=True
    )
    report = asyncio.create_task(
        runtime.workflows.report_progress(str(task.id), ProgressReport(processed_records=3, total_records=10))
    )
    await asyncio.sleep(0.5)
    async with build_worker(runtime):
        snapshot = await asyncio.wait_for(report, 30)
        assert (snapshot.status, snapshot.processed_records, snapshot.retry_count) == ("processing", 3, 1)


async def test_a_report_arriving_with_the_scheduled_time_waits_for_the_task_to_be_pending(
    runtime: Runtime,
) -> None:
    """The scheduled time has come (the API may already show the task pending) and a report arrives
    in the same workflow activation as the timer: it is applied, not refused as "task is scheduled"."""
    svc = runtime.tasks
    due = datetime.now(UTC) + timedelta(seconds=2)
    async with build_worker(runtime):
        task = await svc.create_task(
            WHO, CreateTask(task_type="process", entity_type="e", requested_by="", scheduled_at=due)
        )
        assert task.status is TaskStatus.SCHEDULED
        await assert_eventually(
            lambda: _runs(runtime, task.id), lambda runs: runs == [WorkflowExecutionStatus.RUNNING]
        )
        await asyncio.sleep(0.5)  # the run waits on its timer
    await asyncio.sleep(max(0.0, (due - datetime.now(UTC)).total_seconds()) + 0.5)
    report = asyncio.create_task(
        runtime.workflows.report_progress(str(task.id), ProgressReport(processed_records=1))
    )
    await asyncio.sleep(0.5)
    async with build_worker(runtime):
        snapshot = await asyncio.wait_for(report, 30)
    assert (snapshot.status, snapshot.processed_records) == ("processing", 1)
