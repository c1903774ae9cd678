"""The retention job: a Schedule whose runs are ``retention`` tasks that delete old final tasks."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest
from temporalio.client import ScheduleActionExecutionStartWorkflow, ScheduleActionStartWorkflow
from temporalio.worker import Worker

from common_operations.bootstrap import Runtime
from common_operations.domain.errors import TaskNotFound
from common_operations.domain.files import task_prefix
from common_operations.domain.principal import Principal
from common_operations.domain.status import TaskStatus
from common_operations.domain.task import CreateTask, PageRequest, Task, TaskQuery
from common_operations.domain.workflow_types import RETENTION_JOB_WORKFLOW_TYPE, retention_schedule_id
from common_operations.services.retention import CRON_MEMO, ensure_retention_schedule
from tests.helpers import assert_eventually

# An admin: only admins create retention tasks.
ME = Principal("retention-test", frozenset({"admin"}))


async def _get(runtime: Runtime, task_id: uuid.UUID) -> Task:
    return await runtime.tasks.get_task(ME, task_id)


async def _final(runtime: Runtime) -> Task:
    task = await runtime.tasks.create_task(ME, CreateTask("process", "orders", "retention-test"))
    await runtime.tasks.cancel_task(ME, task.id, "made final for the retention test")
    return await assert_eventually(lambda: _get(runtime, task.id), lambda t: t.status is TaskStatus.CANCELLED)


async def _backdate(runtime: Runtime, ids: list[uuid.UUID], days: int) -> None:
    conn = await asyncpg.connect(runtime.settings.database.url)
    try:
        await conn.execute(
            "UPDATE tasks SET completed_at = now() - make_interval(days => $2) WHERE id = ANY($1)", ids, days
        )
    finally:
        await conn.close()


async def test_retention_task_deletes_old_final_tasks_and_their_files(
    runtime: Runtime, worker: Worker
) -> None:
    old = [await _final(runtime) for _ in range(3)]
    recent = await _final(runtime)
    running = await runtime.tasks.create_task(ME, CreateTask("process", "orders", "retention-test"))
    await _backdate(runtime, [t.id for t in old], 40)
    # Old enough, but not final: a running task is never touched, however old it looks.
    await _backdate(runtime, [running.id], 40)
    key = f"{task_prefix(str(old[0].id))}notes.txt"
    with runtime.storage.open_write(key, content_type="text/plain") as out:
        out.write(b"left behind by a client")
    assert runtime.storage.stat(key) is not None
    # The session's database is shared: other tests' old final tasks (if any) go too, and count.
    due = await runtime.bulk_jobs.final_tasks_before(datetime.now(UTC) - timedelta(days=30), 10_000)
    assert {t.id for t in old} <= {task_id for task_id, _ in due}

    job = await runtime.tasks.create_task(
        ME, CreateTask("retention", "tasks", "retention-test", params={"olderThanDays": 30})
    )
    done = await assert_eventually(lambda: _get(runtime, job.id), lambda t: t.status.is_closed, timeout=30)

    assert done.status is TaskStatus.COMPLETED, done.error_message
    assert done.counts.total == done.counts.processed == len(due)
    for task in old:
        with pytest.raises(TaskNotFound):
            await _get(runtime, task.id)
    assert runtime.storage.stat(key) is None
    assert (await _get(runtime, recent.id)).status is TaskStatus.CANCELLED
    assert (await _get(runtime, running.id)).status is TaskStatus.PENDING
    logs = await runtime.tasks.task_logs(ME, job.id, _first_page())
    assert any(f"deleted {len(due)} final tasks older than 30 days" in line.message for line in logs.items)
    await runtime.tasks.cancel_task(ME, running.id)


async def test_retention_task_refuses_a_bad_age(runtime: Runtime, worker: Worker) -> None:
    victim = await _final(runtime)
    await _backdate(runtime, [victim.id], 40)
    job = await runtime.tasks.create_task(
        ME, CreateTask("retention", "tasks", "retention-test", params={"olderThanDays": "all"})
    )
    done = await assert_eventually(lambda: _get(runtime, job.id), lambda t: t.status.is_closed, timeout=30)
    assert done.status is TaskStatus.FAILED
    assert "olderThanDays" in (done.error_message or "")
    assert (await _get(runtime, victim.id)).status is TaskStatus.CANCELLED


async def test_schedule_is_created_once_and_its_runs_are_retention_tasks(
    runtime: Runtime, worker: Worker
) -> None:
    queue = runtime.settings.temporal.task_queue
    handle = await ensure_retention_schedule(runtime)
    try:
        assert handle.id == retention_schedule_id(queue)
        desc = await handle.describe()
        action = desc.schedule.action
        assert isinstance(action, ScheduleActionStartWorkflow)
        assert action.workflow == RETENTION_JOB_WORKFLOW_TYPE and action.task_queue == queue
        assert _cron_of(runtime, action) == runtime.settings.bulk.retention_schedule == "0 3 * * *"
        (calendar,) = desc.schedule.spec.calendars
        assert [(r.start, r.end) for r in calendar.hour] == [(3, 3)]

        # Idempotent: a second worker start neither fails nor changes the Schedule.
        await ensure_retention_schedule(runtime)
        again = await handle.describe()
        assert again.info.created_at == desc.info.created_at
        assert again.info.last_updated_at == desc.info.last_updated_at

        # A changed cron in the configuration reaches the existing Schedule.
        runtime.settings.bulk.retention_schedule = "30 4 * * *"
        await ensure_retention_schedule(runtime)
        changed = await handle.describe()
        assert _cron_of(runtime, changed.schedule.action) == "30 4 * * *"
        (calendar,) = changed.schedule.spec.calendars
        assert [(r.start, r.end) for r in calendar.hour] == [(4, 4)]

        await handle.trigger()
        described = await assert_eventually(
            handle.describe, lambda d: bool(d.info.recent_actions), timeout=15
        )
        started = described.info.recent_actions[0].action
        assert isinstance(started, ScheduleActionExecutionStartWorkflow)
        task_id = await runtime.client.get_workflow_handle(started.workflow_id, result_type=str).result()
        task = await assert_eventually(
            lambda: _get(runtime, uuid.UUID(task_id)), lambda t: t.status.is_closed, timeout=30
        )
        assert task.task_type == "retention" and task.requested_by == "retention"
        assert task.status is TaskStatus.COMPLETED, task.error_message
        assert task.params == {"olderThanDays": runtime.settings.bulk.retention_days}
        listed = await runtime.tasks.list_tasks(
            ME, TaskQuery(task_type="retention", requested_by="retention")
        )
        assert task.id in {t.id for t in listed.items}
    finally:
        await handle.delete()


def _cron_of(runtime: Runtime, action: object) -> str | None:
    assert isinstance(action, ScheduleActionStartWorkflow) and action.memo is not None
    value = runtime.client.data_converter.payload_converter.from_payload(action.memo[CRON_MEMO], str)
    return value if isinstance(value, str) else None


def _first_page() -> PageRequest:
    return PageRequest(page=1, page_size=100)
