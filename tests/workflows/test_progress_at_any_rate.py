"""Progress at any rate, for as long as a task runs: bounded histories, coalesced writes, idempotency.

Against the real dev server (Temporal's per-run Update and history limits are the server's own).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator

import pytest
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.worker import Worker

from common_operations.bootstrap import Runtime, open_runtime
from common_operations.config import Settings
from common_operations.domain.errors import InvalidTransition, ReportLimitReached
from common_operations.domain.principal import Principal
from common_operations.domain.status import TaskStatus
from common_operations.domain.task import CreateTask, PageRequest, ProgressReport, Task
from common_operations.domain.workflow_types import DelegatedTaskInput, DelegatedTaskResult, workflow_id_for
from common_operations.worker import build_worker
from tests.helpers import assert_eventually

SERVICE = Principal("catalog-service", frozenset({"service"}))
# Delegated types name no reporters in the test settings: their activity reports as an admin.
DELEGATE = Principal("catalog-delegate", frozenset({"admin"}))


async def _runs(client: Client, task: Task) -> list[tuple[str, WorkflowExecutionStatus | None, int]]:
    """Every run of the task's workflow: id, status and history length."""
    runs = []
    async for execution in client.list_workflows(f"WorkflowId = '{workflow_id_for(str(task.id))}'"):
        history = await client.get_workflow_handle(execution.id, run_id=execution.run_id).fetch_history()
        runs.append((execution.run_id, execution.status, len(history.events)))
    return runs


async def _events(runtime: Runtime, task: Task) -> list[str]:
    page = await runtime.tasks.task_events(SERVICE, task.id, PageRequest(page_size=1000))
    return [e.event_type for e in page.items]


@pytest.fixture
async def coalescing(settings: Settings, client: Client) -> AsyncIterator[Runtime]:
    """The production run limits: mirror writes at most once a second, a new run per 1,000 reports."""
    settings.operations.progress_interval = 1.0
    async with open_runtime(settings, client=client, with_worker=True) as rt, build_worker(rt):
        yield rt


@pytest.mark.slow
@pytest.mark.timeout(600)
async def test_ten_thousand_reports_and_twenty_reporters(coalescing: Runtime) -> None:
    """A long busy task: every report answered, exact counts, every run's history bounded."""
    runtime = coalescing
    svc = runtime.tasks
    task = await svc.create_task(SERVICE, CreateTask("process", "product", "busy"))
    total = 10_000 + 20 * 25
    started = time.monotonic()
    for done in range(1, 10_001):
        answer = await svc.update_progress(
            SERVICE,
            task.id,
            ProgressReport(total_records=total, processed_records=done, success_records=done),
        )
        assert answer.counts.processed == done  # the answer is the workflow's exact state
    sequential = time.monotonic() - started

    async def reporter(k: int) -> None:
        for i in range(25):
            await svc.update_progress(
                SERVICE,
                task.id,
                ProgressReport(processed_records=1, success_records=1, increment=True, report_id=f"w{k}-{i}"),
            )

    await asyncio.gather(*(reporter(k) for k in range(20)))
    done = await svc.update_progress(SERVICE, task.id, ProgressReport(is_completed=True))
    assert done.status is TaskStatus.COMPLETED
    assert (done.counts.processed, done.counts.success, done.counts.total) == (total, total, total)

    row = await svc.get_task(SERVICE, task.id)
    assert row.status is TaskStatus.COMPLETED and row.counts.processed == total
    runs = await _runs(runtime.client, task)
    assert len(runs) >= 10, runs  # continued as new at least every 1,000 reports
    assert max(length for _, _, length in runs) < 10_000, runs
    assert sum(status is WorkflowExecutionStatus.CONTINUED_AS_NEW for _, status, _ in runs) == len(runs) - 1
    events = await _events(runtime, task)
    assert events[:2] == ["task.created", "task.started"] and events[-1] == "task.completed"
    progress = events.count("task.progress")
    # Throttled: at most one progress event per second of reporting (plus the edges), not 10,500.
    assert 1 <= progress <= sequential + 20, (progress, sequential)


@pytest.fixture
async def small_runs(settings: Settings, client: Client) -> AsyncIterator[Runtime]:
    """Runs that continue as new after 10 reports, and no coalescing delay."""
    settings.operations.max_reports_per_run = 10
    settings.operations.progress_interval = 0
    async with open_runtime(settings, client=client, with_worker=True) as rt, build_worker(rt):
        yield rt


async def test_reports_across_continue_as_new_are_applied_once(small_runs: Runtime) -> None:
    svc = small_runs.tasks
    task = await svc.create_task(SERVICE, CreateTask("process", "product", "switching"))
    for i in range(35):
        await svc.update_progress(
            SERVICE, task.id, ProgressReport(processed_records=1, increment=True, report_id=f"r{i}")
        )
    runs = await _runs(small_runs.client, task)
    assert len(runs) >= 4  # 35 reports, a new run every 10
    # A caller retrying an early report after the switch (its id was applied in an earlier run):
    # answered with the current state, not applied again.
    again = await svc.update_progress(
        SERVICE, task.id, ProgressReport(processed_records=1, increment=True, report_id="r0")
    )
    assert again.counts.processed == 35
    snapshot = await small_runs.workflows.progress(str(task.id))
    assert snapshot.processed_records == 35 and snapshot.runs == len(runs)
    # Absolute reports too: an old report retried late cannot move the counts back.
    await svc.update_progress(SERVICE, task.id, ProgressReport(processed_records=50, report_id="abs-1"))
    await svc.update_progress(SERVICE, task.id, ProgressReport(processed_records=60, report_id="abs-2"))
    await svc.update_progress(SERVICE, task.id, ProgressReport(processed_records=50, report_id="abs-1"))
    # (Within one run Temporal answers a repeated Update id with its first outcome; across runs the
    # workflow answers with its current state. Either way the report is not applied again.)
    assert (await small_runs.workflows.progress(str(task.id))).processed_records == 60
    done = await svc.update_progress(SERVICE, task.id, ProgressReport(is_completed=True))
    assert done.status is TaskStatus.COMPLETED
    row = await svc.get_task(SERVICE, task.id)
    assert row.counts.processed == 60 and row.status is TaskStatus.COMPLETED
    # Every sequence number once, in order: nothing was written twice across the runs.
    events = (await svc.task_events(SERVICE, task.id, PageRequest(page_size=1000))).items
    assert [e.seq for e in events] == list(range(len(events)))


async def test_plain_reports_are_coalesced_but_the_query_is_exact(coalescing: Runtime) -> None:
    runtime = coalescing
    svc = runtime.tasks
    task = await svc.create_task(SERVICE, CreateTask("process", "product", "coalesced"))
    await svc.update_progress(SERVICE, task.id, ProgressReport(total_records=1000, processed_records=1))
    for done in range(2, 201):
        await svc.update_progress(
            SERVICE, task.id, ProgressReport(processed_records=done, message=f"at {done}")
        )
    snapshot = await runtime.workflows.progress(str(task.id))
    assert snapshot.processed_records == 200  # the query is always exact
    # The mirror catches up within the interval with the latest counts, not an earlier one.
    row = await assert_eventually(
        lambda: svc.get_task(SERVICE, task.id), lambda t: t.counts.processed == 200, timeout=5
    )
    assert row.status is TaskStatus.PROCESSING
    events = await _events(runtime, task)
    assert events.count("task.progress") < 50, events
    # Report messages are kept (buffered up to a bound per write), the rest counted.
    logs = (await svc.task_logs(SERVICE, task.id, PageRequest(page_size=1000))).items
    assert any(log.message == "at 200" or "not logged" in log.message for log in logs)


async def test_a_retried_report_id_is_applied_once(runtime: Runtime, worker: Worker) -> None:
    svc = runtime.tasks
    task = await svc.create_task(SERVICE, CreateTask("process", "product", "idempotent"))
    once = ProgressReport(processed_records=5, success_records=5, increment=True, report_id="batch-1")
    first = await svc.update_progress(SERVICE, task.id, once)
    again = await svc.update_progress(SERVICE, task.id, once)  # the caller timed out and retried
    assert first.counts.processed == again.counts.processed == 5
    other = await svc.update_progress(
        SERVICE, task.id, ProgressReport(processed_records=5, increment=True, report_id="batch-2")
    )
    assert other.counts.processed == 10


async def test_many_parallel_reporters_are_queued_not_refused(runtime: Runtime, worker: Worker) -> None:
    """More reporters than Temporal's in-flight Update limit (10): every report succeeds."""
    svc = runtime.tasks
    task = await svc.create_task(SERVICE, CreateTask("process", "product", "parallel"))
    await svc.update_progress(SERVICE, task.id, ProgressReport(total_records=30 * 10))

    async def worker_k(k: int) -> None:
        for i in range(10):
            await svc.update_progress(
                SERVICE, task.id, ProgressReport(processed_records=1, increment=True, report_id=f"{k}/{i}")
            )

    await asyncio.gather(*(worker_k(k) for k in range(30)))
    assert (await runtime.workflows.progress(str(task.id))).processed_records == 300


async def test_a_delegated_attempt_refuses_reports_beyond_its_budget(
    small_runs: Runtime, delegate_queue: str
) -> None:
    """A delegated run cannot continue as new while its activity works: reports past the budget
    are refused with a clear error, and the task is not failed for it."""
    svc = small_runs.tasks
    refused: list[Exception] = []
    release = asyncio.Event()

    from temporalio import activity

    @activity.defn(name="echo_task")
    async def chatty(inp: DelegatedTaskInput) -> DelegatedTaskResult:
        for i in range(12):
            try:
                await svc.update_progress(
                    DELEGATE,
                    uuid.UUID(inp.task_id),
                    ProgressReport(processed_records=i + 1, total_records=100),
                )
            except ReportLimitReached as err:
                refused.append(err)
        release.set()
        return DelegatedTaskResult(processed_records=100, success_records=100)

    async with Worker(small_runs.client, task_queue=delegate_queue, activities=[chatty]):
        task = await svc.create_task(SERVICE, CreateTask("delegated_echo", "product", "chatty"))
        await asyncio.wait_for(release.wait(), 30)
        done = await assert_eventually(lambda: svc.get_task(SERVICE, task.id), lambda t: t.status.is_closed)
    assert len(refused) == 2 and refused[0].code == "REPORT_LIMIT_REACHED"
    assert isinstance(refused[0], InvalidTransition)
    assert done.status is TaskStatus.COMPLETED and done.counts.processed == 100
