"""Reconciler: repairs and reports what no workflow code could record.

One pass, in order:

- **closed runs**: a workflow terminated by an operator (or timed out) runs no code, so its task would
  stay active in the mirror: it is marked ``failed`` with the reason (every such run since the last
  pass, however many, page after page);
- **run-less tasks**: a task row whose workflow was never started (the process died between the two,
  or Temporal was unreachable) gets its run started; a quiet run that never wrote is adopted;
- **stuck runs**: a run whose workflow task keeps failing (a code bug, a non-deterministic change
  after a deploy, a misconfigured task type) is flagged by Temporal (``TemporalReportedProblems``);
  each such task gets a ``task.stuck`` event and log line, and the pass reports them.

Every write is guarded by the exact sequence and owner the pass read, so concurrent passes and live
runs never conflict. In a deployment one reconciler is active: the ``TaskReconciler`` workflow
(``workflows.reconciler_workflow``) runs the passes as activities on whichever worker is available,
and is itself visible in the Temporal Web UI and through its ``status`` query.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable, Iterable
from datetime import datetime, timedelta
from typing import TypeVar

from temporalio.client import WorkflowExecution

from common_operations.config import OperationsSettings
from common_operations.db.repository import TaskRepository
from common_operations.domain.errors import DomainError
from common_operations.domain.status import TaskStatus
from common_operations.domain.task import Task
from common_operations.domain.workflow_types import (
    WORKFLOW_TYPE,
    ReconcilePassResult,
    ReconcileReport,
    task_id_of,
)
from common_operations.infra.metrics import tasks as task_metrics
from common_operations.infra.temporal import TaskWorkflows
from common_operations.services.runs import TaskRuns, now
from common_operations.services.tasks import ProbeFailed

log = logging.getLogger(__name__)

T = TypeVar("T")

# Each task queue has its reconciler (one service's tasks, even in a shared namespace).
# Closed runs whose task may still look active: any run that closed while its TaskStatus said so,
# and every run an operator terminated or that timed out (a failed task waiting for its automatic
# retry says "failed" but still needs recording). Continued-as-new runs are links of a live chain.
_CLOSED_QUERY = (
    f"WorkflowType = '{WORKFLOW_TYPE}' AND TaskQueue = '{{queue}}' AND CloseTime > '{{since}}' "
    "AND ExecutionStatus IN ('Terminated', 'TimedOut', 'Failed', 'Canceled', 'Completed') "
    "AND (TaskStatus IN ('pending', 'scheduled', 'processing') "
    "OR ExecutionStatus IN ('Terminated', 'TimedOut'))"
)
_STUCK_QUERY = (
    f"WorkflowType = '{WORKFLOW_TYPE}' AND TaskQueue = '{{queue}}' AND ExecutionStatus = 'Running' "
    "AND TemporalReportedProblems IS NOT NULL"
)
_BATCH = 500
_CONCURRENCY = 16
_STUCK_IDS_SHOWN = 100


class Reconciler:
    """One pass at a time via :meth:`run_once`."""

    def __init__(
        self, repository: TaskRepository, workflows: TaskWorkflows, settings: OperationsSettings
    ) -> None:
        """Reconcile the mirror in ``repository`` with the runs behind ``workflows``."""
        self.repository = repository
        self.workflows = workflows
        self.settings = settings
        self.runs = TaskRuns(repository, workflows, settings)
        self._reports_problems: bool | None = None

    async def run_once(self, since: datetime | None = None) -> ReconcilePassResult:
        """One pass: closed runs since ``since`` (a day back when unknown), run-less tasks, stuck runs.

        Returns:
            What the pass did, and the watermark the next pass should start from.
        """
        started = now()
        report = ReconcileReport()
        await self._closed_runs(since or started - timedelta(hours=24), report)
        await self._runless_tasks(report)
        await self._stuck_runs(report)
        # Visibility lags a little behind closes: the next pass looks back over a margin.
        margin = timedelta(seconds=max(60.0, 4 * self.settings.reconcile_interval))
        return ReconcilePassResult(report=report, next_since=started - margin, finished_at=now())

    async def _closed_runs(self, since: datetime, report: ReconcileReport) -> None:
        query = _CLOSED_QUERY.format(
            queue=self.workflows.task_queue, since=since.strftime("%Y-%m-%dT%H:%M:%SZ")
        )
        batch: dict[uuid.UUID, WorkflowExecution] = {}
        async for execution in self.workflows.list_runs(query):
            report.closed_runs_seen += 1
            try:
                batch[uuid.UUID(task_id_of(execution.id))] = execution
            except ValueError:
                continue
            if len(batch) >= _BATCH:
                await self._record_closed(batch, report)
                batch = {}
        if batch:
            await self._record_closed(batch, report)

    async def _record_closed(
        self, batch: dict[uuid.UUID, WorkflowExecution], report: ReconcileReport
    ) -> None:
        tasks = [
            t
            for t in await self.repository.get_many(list(batch))
            if t.status.is_active or t.next_retry_at is not None
        ]

        async def one(task: Task) -> None:
            info = await self.workflows.describe(str(task.id))
            if info is None or info.running:
                return  # a newer run of the chain (or a retry) is working on it
            recorded = await self.runs.record_closed_run(task, info)
            if recorded is not None:
                if recorded is TaskStatus.CANCELLED:
                    report.cancelled += 1
                else:
                    report.failed += 1

        await _bounded(one, tasks)

    async def _runless_tasks(self, report: ReconcileReport) -> None:
        older_than = now() - timedelta(seconds=self.settings.orphan_grace)

        async def one(task: Task) -> None:
            info = await self.workflows.describe(str(task.id))
            if info is not None and info.running:
                await self.repository.set_run_id(task.id, info.run_id)
                report.adopted += 1
                return
            if info is not None:
                if await self.runs.record_closed_run(task, info) is not None:
                    report.failed += 1
                return
            try:
                run_id = await self.runs.ensure_started(task)
            except DomainError as err:
                log.warning("could not start the workflow of task %s: %s", task.id, err)
                return
            if run_id is not None:
                await self.repository.set_run_id(task.id, run_id)
                report.started += 1
                log.info("started the missing workflow of task %s", task.id)

        await _bounded(one, await self.repository.runless(older_than, limit=_BATCH))

    async def _stuck_runs(self, report: ReconcileReport) -> None:
        if self._reports_problems is None:
            self._reports_problems = await self.workflows.reports_problems()
            if not self._reports_problems:
                log.warning(
                    "this Temporal server does not report failing workflow tasks; stuck runs go unseen"
                )
        if not self._reports_problems:
            return
        async for execution in self.workflows.list_runs(_STUCK_QUERY.format(queue=self.workflows.task_queue)):
            try:
                task_id = uuid.UUID(task_id_of(execution.id))
            except ValueError:
                continue
            problems = execution.search_attributes.get("TemporalReportedProblems") or []
            detail = ", ".join(str(p) for p in problems) or "workflow task failing"
            report.stuck += 1
            if len(report.stuck_task_ids) < _STUCK_IDS_SHOWN:
                report.stuck_task_ids.append(str(task_id))
            message = (
                f"the task's workflow cannot make progress: its workflow task keeps failing ({detail}). "
                "Check the worker logs: a code bug, a non-deterministic workflow change or a "
                "misconfigured task type"
            )
            if await self.repository.annotate(task_id, "task.stuck", message, level="error", problems=detail):
                log.error("task %s is stuck: %s", task_id, detail)
        # At once in this process; every other process reads it from the reconciler's status.
        task_metrics.TASKS_STUCK.set(report.stuck)


async def _bounded(fn: Callable[[T], Awaitable[None]], items: Iterable[T]) -> None:
    """Run ``fn`` over ``items``, a few at a time (each is a Temporal round trip or two)."""
    limit = asyncio.Semaphore(_CONCURRENCY)

    async def guarded(item: T) -> None:
        async with limit:
            await fn(item)

    await asyncio.gather(*(guarded(item) for item in items))


def reconciler_probes(
    workflows: TaskWorkflows, settings: OperationsSettings
) -> dict[str, Callable[[], Awaitable[None]]]:
    """Health probes of the reconciler workflow and of the stuck runs its last pass found."""

    async def reconciler() -> None:
        state = await workflows.reconciler_status()
        if state.last_error:
            raise ProbeFailed(f"the last pass failed: {state.last_error}")
        stale = timedelta(seconds=max(120.0, 4 * settings.reconcile_interval))
        if state.last is not None and now() - state.last.finished_at > stale:
            raise ProbeFailed(f"no pass since {state.last.finished_at.isoformat()}")

    async def stuck_tasks() -> None:
        state = await workflows.reconciler_status()
        report = state.last.report if state.last is not None else None
        if report is not None and report.stuck:
            ids = ", ".join(report.stuck_task_ids[:10])
            more = f" and {report.stuck - 10} more" if report.stuck > 10 else ""
            raise ProbeFailed(f"{report.stuck} tasks stuck (their workflow task keeps failing): {ids}{more}")

    return {"reconciler": reconciler, "stuck_tasks": stuck_tasks}
