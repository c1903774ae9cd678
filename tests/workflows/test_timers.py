"""Long timers on the time-skipping test server: schedules, silent workers, per-task timeouts.

The test server cannot register custom search attributes, so these runtimes run with
``temporal.search_attributes`` off; everything else is the production path.
"""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from temporalio.testing import WorkflowEnvironment

from common_operations.bootstrap import Runtime
from common_operations.domain.principal import Principal
from common_operations.domain.status import TaskStatus
from common_operations.domain.task import CreateTask, PageRequest, ProgressReport
from tests.helpers import assert_eventually

OPS = Principal("scheduler-test", frozenset({"admin"}))


async def _status(runtime: Runtime, task_id: uuid.UUID) -> TaskStatus:
    return (await runtime.tasks.get_task(OPS, task_id)).status


async def test_scheduled_task_starts_on_time(
    ts_runtime: Runtime, time_skipping_env: WorkflowEnvironment
) -> None:
    svc = ts_runtime.tasks
    # The server's clock, not the wall clock: other tests on this server have skipped time ahead.
    start_at = await time_skipping_env.get_current_time() + timedelta(hours=1)
    task = await svc.create_task(
        OPS, CreateTask(task_type="process", entity_type="order", requested_by="", scheduled_at=start_at)
    )
    assert task.status is TaskStatus.SCHEDULED
    assert task.scheduled_at == start_at

    # A report before the schedule is refused: the task has not started.
    with pytest.raises(Exception, match="scheduled"):
        await svc.update_progress(OPS, task.id, ProgressReport(processed_records=1))

    await time_skipping_env.sleep(timedelta(minutes=59))
    assert await _status(ts_runtime, task.id) is TaskStatus.SCHEDULED

    await time_skipping_env.sleep(timedelta(minutes=2))
    await assert_eventually(lambda: _status(ts_runtime, task.id), lambda s: s is TaskStatus.PENDING)
    events = (await svc.task_events(OPS, task.id, PageRequest())).items
    pending = [e for e in events if e.event_type == "task.pending"]
    assert len(pending) == 1
    # Recorded at the workflow's (skipped) clock: on time, not before.
    assert pending[0].created_at >= start_at

    # Leave no running workflow behind: its timers would hold the shared server's clock.
    assert (await svc.cancel_task(OPS, task.id)).status is TaskStatus.CANCELLED


async def test_silent_external_worker_fails_the_task(
    ts_runtime: Runtime, time_skipping_env: WorkflowEnvironment
) -> None:
    svc = ts_runtime.tasks
    task = await svc.create_task(OPS, CreateTask(task_type="process", entity_type="order", requested_by=""))
    task = await svc.update_progress(OPS, task.id, ProgressReport(total_records=100, processed_records=10))
    assert task.status is TaskStatus.PROCESSING

    await time_skipping_env.sleep(timedelta(minutes=9))
    task = await svc.update_progress(OPS, task.id, ProgressReport(processed_records=20))
    assert task.status is TaskStatus.PROCESSING  # a report resets the silence window

    await time_skipping_env.sleep(timedelta(minutes=11))
    task = await assert_eventually(
        lambda: svc.get_task(OPS, task.id), lambda t: t.status is TaskStatus.FAILED
    )
    assert task.error_message is not None
    assert "no progress report from the external worker within 600s" in task.error_message
    assert task.counts.processed == 20  # the last reported progress is kept


async def test_task_timeout_bounds_a_run(ts_runtime: Runtime, time_skipping_env: WorkflowEnvironment) -> None:
    svc = ts_runtime.tasks
    task = await svc.create_task(OPS, CreateTask(task_type="process", entity_type="order", requested_by=""))
    # Keep reporting so the silence window never fires; the 2-hour task timeout still ends the run.
    for _ in range(13):
        await svc.update_progress(OPS, task.id, ProgressReport(processed_records=1))
        await time_skipping_env.sleep(timedelta(minutes=9, seconds=50))
    task = await assert_eventually(
        lambda: svc.get_task(OPS, task.id), lambda t: t.status is TaskStatus.FAILED
    )
    assert task.error_message == "task exceeded its timeout of 7200s"
