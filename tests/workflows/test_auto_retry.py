"""Automatic retries: a failed attempt is retried by the workflow itself after a durable timer.

On the time-skipping server, so backoffs of minutes take no time.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import timedelta

import pytest
from temporalio.testing import WorkflowEnvironment

from common_operations.bootstrap import Runtime, open_runtime
from common_operations.config import AutoRetrySettings
from common_operations.domain.errors import InvalidTransition
from common_operations.domain.principal import Principal
from common_operations.domain.status import TaskStatus
from common_operations.domain.task import CreateTask, PageRequest, ProgressReport, Task
from common_operations.worker import build_worker
from tests.conftest import make_settings
from tests.helpers import assert_eventually

OPS = Principal("retry-test", frozenset({"admin"}))
SILENCE = timedelta(minutes=10)  # heartbeat timeout of the task type
FIRST_BACKOFF = timedelta(minutes=30)


@pytest.fixture
async def retrying(
    database_url: str, time_skipping_env: WorkflowEnvironment, task_queue: str, delegate_queue: str
) -> AsyncIterator[Runtime]:
    """A runtime whose ``retrying_check`` tasks fail after 10 silent minutes and are retried twice,
    30 then 60 minutes later; up to 3 retries in all."""
    settings = make_settings(
        database_url,
        time_skipping_env.client.service_client.config.target_host,
        task_queue,
        delegate_queue,
        search_attributes=False,
        task_timeout=86400,
    )
    kind = settings.operations.task_types["retrying_check"]
    kind.heartbeat_timeout = SILENCE.total_seconds()
    kind.auto_retry = AutoRetrySettings(
        attempts=2,
        initial_interval=FIRST_BACKOFF.total_seconds(),
        backoff_coefficient=2,
        maximum_interval=7200,
    )
    async with open_runtime(settings, client=time_skipping_env.client) as runtime, build_worker(runtime):
        yield runtime


async def _task(runtime: Runtime, task_id: uuid.UUID) -> Task:
    return await runtime.tasks.get_task(OPS, task_id)


async def _until(runtime: Runtime, task_id: uuid.UUID, status: TaskStatus, **expected: object) -> Task:
    def matches(t: Task) -> bool:
        return t.status is status and all(getattr(t, k) == v for k, v in expected.items())

    return await assert_eventually(lambda: _task(runtime, task_id), matches)


async def test_failed_attempts_are_retried_after_their_backoff(
    retrying: Runtime, time_skipping_env: WorkflowEnvironment
) -> None:
    svc = retrying.tasks
    task = await svc.create_task(OPS, CreateTask("retrying_check", "order", "", max_retries=3))
    await svc.update_progress(OPS, task.id, ProgressReport(total_records=10, processed_records=4))

    await time_skipping_env.sleep(SILENCE + timedelta(minutes=1))
    failed = await _until(retrying, task.id, TaskStatus.FAILED)
    assert failed.next_retry_at is not None and failed.retry_count == 0
    assert "automatic retry 1" in (await svc.task_logs(OPS, task.id, PageRequest())).items[-1].message

    # The backoff is a durable timer: nothing happens before it fires.
    await time_skipping_env.sleep(FIRST_BACKOFF - timedelta(minutes=5))
    assert (await _task(retrying, task.id)).status is TaskStatus.FAILED
    await time_skipping_env.sleep(timedelta(minutes=6))
    retried = await _until(retrying, task.id, TaskStatus.PENDING, retry_count=1)
    assert retried.next_retry_at is None and retried.error_message is None
    assert retried.counts.processed == 0 and retried.counts.total == 10  # the attempt counts again

    # Second failure, second automatic retry after twice the backoff.
    await time_skipping_env.sleep(SILENCE + timedelta(minutes=1))
    await _until(retrying, task.id, TaskStatus.FAILED, retry_count=1)
    await time_skipping_env.sleep(2 * FIRST_BACKOFF + timedelta(minutes=1))
    await _until(retrying, task.id, TaskStatus.PENDING, retry_count=2)

    # The last automatic attempt fails: the task stays failed, with no retry pending...
    await time_skipping_env.sleep(SILENCE + timedelta(minutes=1))
    final = await _until(retrying, task.id, TaskStatus.FAILED, retry_count=2, next_retry_at=None)
    events = [e.event_type for e in (await svc.task_events(OPS, task.id, PageRequest())).items]
    assert events == [
        "task.created",
        "task.started",
        "task.failed",
        "task.retried",
        "task.failed",
        "task.retried",
        "task.failed",
    ]
    # ...and can still be retried by hand while retryCount < maxRetries.
    again = await svc.retry_task(OPS, task.id)
    assert again.status is TaskStatus.PENDING and again.retry_count == 3
    assert again.run_id != final.run_id
    done = await svc.update_progress(OPS, task.id, ProgressReport(processed_records=10, is_completed=True))
    assert done.status is TaskStatus.COMPLETED


async def test_cancel_during_the_backoff_cancels_the_task(
    retrying: Runtime, time_skipping_env: WorkflowEnvironment
) -> None:
    svc = retrying.tasks
    task = await svc.create_task(OPS, CreateTask("retrying_check", "order", ""))
    await time_skipping_env.sleep(SILENCE + timedelta(minutes=1))
    waiting = await _until(retrying, task.id, TaskStatus.FAILED)
    assert waiting.next_retry_at is not None
    # Deleting a task whose workflow will retry it is refused; cancelling it is how to stop it.
    with pytest.raises(InvalidTransition, match="automatic retry"):
        await svc.delete_task(OPS, task.id)
    cancelled = await svc.cancel_task(OPS, task.id, "not needed any more")
    assert cancelled.status is TaskStatus.CANCELLED and cancelled.next_retry_at is None
    logs = (await svc.task_logs(OPS, task.id, PageRequest())).items
    assert "not needed any more" in logs[-1].message and "retry-test" in logs[-1].message
    await svc.delete_task(OPS, task.id)


async def test_retry_by_hand_during_the_backoff_retries_now(
    retrying: Runtime, time_skipping_env: WorkflowEnvironment
) -> None:
    svc = retrying.tasks
    task = await svc.create_task(OPS, CreateTask("retrying_check", "order", ""))
    await time_skipping_env.sleep(SILENCE + timedelta(minutes=1))
    waiting = await _until(retrying, task.id, TaskStatus.FAILED)
    now = await svc.retry_task(OPS, task.id)
    assert now.status is TaskStatus.PENDING and now.retry_count == 1
    info = await retrying.workflows.describe(str(task.id))
    assert info is not None and info.run_id == waiting.run_id  # the waiting run retried at once
    events = [e.event_type for e in (await svc.task_events(OPS, task.id, PageRequest())).items]
    assert events.count("task.retried") == 1
    done = await svc.update_progress(OPS, task.id, ProgressReport(processed_records=1, is_completed=True))
    assert done.status is TaskStatus.COMPLETED
