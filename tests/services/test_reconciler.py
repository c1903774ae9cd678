"""The reconciler misses nothing, runs once, and sees stuck tasks."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from pydantic import ValidationError
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.worker import Worker

from common_operations.activities.mirror import MirrorActivities
from common_operations.activities.reconcile import ReconcileActivities
from common_operations.bootstrap import Runtime, open_runtime
from common_operations.config import Settings, TaskTypeSettings
from common_operations.domain.principal import Principal
from common_operations.domain.status import TaskStatus
from common_operations.domain.task import CreateTask, PageRequest, Task
from common_operations.domain.workflow_types import RECONCILER_WORKFLOW_TYPE, reconciler_workflow_id
from common_operations.services.runs import workflow_input
from common_operations.worker import build_worker, ensure_reconciler
from common_operations.workflows.reconciler_workflow import ReconcilerWorkflow
from tests.broken_workflow import BrokenTaskWorkflow
from tests.helpers import assert_eventually
from tests.services.test_operator_actions import temporal_cli

WHO = Principal("reconciler-test", frozenset({"admin"}))


def test_a_delegated_type_without_a_target_is_refused_when_the_configuration_loads() -> None:
    with pytest.raises(ValidationError, match="needs both `activity` and `task_queue`"):
        TaskTypeSettings(kind="delegated", activity="reindex")
    with pytest.raises(ValidationError, match="needs both"):
        Settings(operations={"task_types": {"reindex": {"kind": "delegated", "task_queue": "catalog"}}})


async def test_one_reconciler_however_many_workers(settings: Settings, client: Client) -> None:
    """Every worker makes sure the reconciler runs; there is one, and its passes go on."""
    # Two workers of the same queue are two processes, each with its own client.
    other = await Client.connect(client.service_client.config.target_host, namespace=client.namespace)
    async with (
        open_runtime(settings, client=client) as first,
        open_runtime(settings, client=other) as second,
        build_worker(first),
        build_worker(second),
    ):
        await asyncio.gather(ensure_reconciler(first), ensure_reconciler(second), ensure_reconciler(first))
        queue = settings.temporal.task_queue

        async def running() -> list[str]:
            query = (
                f"WorkflowType = '{RECONCILER_WORKFLOW_TYPE}' AND TaskQueue = '{queue}' "
                "AND ExecutionStatus = 'Running'"
            )
            return [w.id async for w in client.list_workflows(query)]

        # Visibility lags a little behind the start: wait for it, then it must be exactly one.
        await assert_eventually(running, lambda ids: ids == [reconciler_workflow_id(queue)])
        status = await assert_eventually(first.workflows.reconciler_status, lambda s: s.passes >= 3)
        assert status.last is not None and status.last_error is None
        assert status.since is not None and status.since < status.last.finished_at
        await client.get_workflow_handle(reconciler_workflow_id(queue)).terminate(reason="test over")


async def test_a_run_whose_workflow_task_keeps_failing_is_reported_stuck(runtime: Runtime) -> None:
    """A code bug (or a non-deterministic deploy) leaves the run open and silent: the reconciler
    flags the task with an event and a log line, and /health/detailed names it."""
    at = datetime.now(UTC) - timedelta(minutes=1)
    task = Task(
        id=uuid.uuid4(),
        task_type="process",
        entity_type="product",
        status=TaskStatus.PENDING,
        requested_by="stuck-test",
        created_at=at,
        updated_at=at,
    )
    await runtime.repository.insert_task(task, "created")
    queue = runtime.settings.temporal.task_queue
    # This process's worker runs a broken build of TaskWorkflow (and the reconciler, as usual).
    async with Worker(
        runtime.client,
        task_queue=queue,
        workflows=[BrokenTaskWorkflow, ReconcilerWorkflow],
        activities=[
            MirrorActivities(runtime.repository).mirror_task_state,
            ReconcileActivities(runtime.reconciler()).reconcile_tasks,
        ],
    ):
        await runtime.workflows.start(workflow_input(task, runtime.settings.operations))

        async def stuck() -> list[str]:
            return (await runtime.reconciler().run_once()).report.stuck_task_ids

        await assert_eventually(stuck, lambda ids: str(task.id) in ids, timeout=30, interval=0.5)
        events = (await runtime.tasks.task_events(WHO, task.id, PageRequest())).items
        assert [e.event_type for e in events] == ["task.created", "task.stuck"]
        assert "WorkflowTaskFailed" in events[-1].payload["problems"]
        logs = (await runtime.tasks.task_logs(WHO, task.id, PageRequest())).items
        assert logs[-1].level == "error" and "keeps failing" in logs[-1].message
        # Flagged once per state, however many passes see it.
        await runtime.reconciler().run_once()
        assert len((await runtime.tasks.task_events(WHO, task.id, PageRequest())).items) == 2

        await ensure_reconciler(runtime)
        await assert_eventually(runtime.workflows.reconciler_status, lambda s: s.passes >= 1)
        report = await runtime.tasks.health()
        assert report.healthy and report.degraded
        assert str(task.id) in report.components["stuck_tasks"]
        await runtime.client.get_workflow_handle(reconciler_workflow_id(queue)).terminate(reason="test over")
        await runtime.client.get_workflow_handle(f"task-{task.id}").terminate(reason="test over")


@pytest.mark.slow
@pytest.mark.timeout(900)
async def test_every_run_terminated_by_a_batch_is_reconciled(runtime: Runtime, worker: Worker) -> None:
    """`temporal workflow terminate --query` over 2,000 tasks: all end up failed with the reason."""
    svc = runtime.tasks
    owner = f"batch-{uuid.uuid4().hex[:8]}"
    limit = asyncio.Semaphore(40)

    async def create() -> uuid.UUID:
        async with limit:
            return (await svc.create_task(WHO, CreateTask("data_sync", "inventory", owner))).id

    ids = await asyncio.gather(*(create() for _ in range(2000)))
    query = f"TaskQueue = '{runtime.settings.temporal.task_queue}' AND RequestedBy = '{owner}'"
    await assert_eventually(
        lambda: runtime.client.count_workflows(query), lambda c: c.count == 2000, timeout=60, interval=1
    )
    await temporal_cli(
        runtime, "workflow", "terminate", "--query", query, "--reason", "bad deploy, rolled back", "--yes"
    )
    running = f"{query} AND ExecutionStatus = 'Running'"
    await assert_eventually(
        lambda: runtime.client.count_workflows(running), lambda c: c.count == 0, timeout=300, interval=2
    )
    result = await runtime.reconciler().run_once()
    assert result.report.failed == 2000 and result.report.closed_runs_seen >= 2000
    rows = await runtime.repository.get_many(list(ids))
    assert len(rows) == 2000
    assert all(t.status is TaskStatus.FAILED for t in rows)
    assert all("bad deploy, rolled back" in (t.error_message or "") for t in rows)
    sample = await svc.task_events(WHO, ids[0], PageRequest())
    assert [e.event_type for e in sample.items] == ["task.created", "task.failed"]
    info = await runtime.workflows.describe(str(ids[0]))
    assert info is not None and info.status is WorkflowExecutionStatus.TERMINATED
    # A second pass has nothing left to do.
    assert (await runtime.reconciler().run_once()).report.failed == 0
