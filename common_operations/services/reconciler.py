"""Reconciler: repairs what no workflow code could record.

- a workflow terminated by an operator (or timed out) runs no code, so its task would stay active
  in the mirror: it is marked ``failed`` with the reason;
- a task row whose workflow was never started (the process died between the two) is started.

Every write is guarded by the row's sequence number, so several reconcilers (one per worker) and
concurrent workflow writes never conflict.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from dataclasses import dataclass
from datetime import timedelta

from temporalio.client import Client, WorkflowExecution, WorkflowExecutionStatus
from temporalio.service import RPCError

from common_operations.config import OperationsSettings
from common_operations.db.repository import TaskRepository
from common_operations.domain.errors import DomainError
from common_operations.domain.status import TaskStatus
from common_operations.domain.task import Task
from common_operations.domain.workflow_types import WORKFLOW_TYPE, workflow_id_for
from common_operations.infra.temporal import TaskWorkflows
from common_operations.services.tasks import now, snapshot_write, workflow_input

log = logging.getLogger(__name__)

_CLOSED_QUERY = (
    f"WorkflowType = '{WORKFLOW_TYPE}' AND ExecutionStatus != 'Running' "
    "AND TaskStatus IN ('pending', 'scheduled', 'processing') AND CloseTime > '{since}'"
)

_REASONS = {
    WorkflowExecutionStatus.TERMINATED: "workflow terminated by an operator",
    WorkflowExecutionStatus.TIMED_OUT: "workflow run timed out",
    WorkflowExecutionStatus.FAILED: "workflow failed before recording the outcome",
    WorkflowExecutionStatus.CANCELED: "workflow cancelled before it could record the cancellation",
}


@dataclass(slots=True)
class ReconcileReport:
    """What one pass changed."""

    failed: int = 0
    cancelled: int = 0
    started: int = 0
    adopted: int = 0


async def _termination_reason(client: Client, workflow_id: str, run_id: str) -> str | None:
    history = await client.get_workflow_handle(workflow_id, run_id=run_id).fetch_history()
    last = history.events[-1] if history.events else None
    if last is not None and last.HasField("workflow_execution_terminated_event_attributes"):
        attrs = last.workflow_execution_terminated_event_attributes
        who = f" ({attrs.identity})" if attrs.identity else ""
        return f"{attrs.reason or 'no reason given'}{who}"
    return None


def _run_of(task: Task, executions: list[WorkflowExecution]) -> WorkflowExecution | None:
    """The closed run that the task's mirror state belongs to, if it is among ``executions``.

    A task whose run is not recorded yet (just created or retried) is matched only by a run that
    closed after the task was last written, never by an earlier attempt's run.
    """
    for execution in executions:
        if task.run_id is not None and execution.run_id == task.run_id:
            return execution
        if (
            task.run_id is None
            and execution.close_time is not None
            and task.updated_at is not None
            and execution.close_time > task.updated_at
        ):
            return execution
    return None


class Reconciler:
    """One pass at a time via :meth:`run_once`; :meth:`run_forever` loops it."""

    def __init__(
        self, repository: TaskRepository, workflows: TaskWorkflows, settings: OperationsSettings
    ) -> None:
        """Reconcile the mirror in ``repository`` with the runs behind ``workflows``."""
        self.repository = repository
        self.workflows = workflows
        self.settings = settings
        # The first pass looks back a day (runs closed while no worker ran); later passes only
        # since the previous one, with a margin for visibility lag.
        self._since = now() - timedelta(hours=24)

    async def run_forever(self) -> None:
        """Reconcile every ``operations.reconcile_interval`` seconds until cancelled."""
        while True:
            try:
                await self.run_once()
            except (DomainError, RPCError, OSError) as err:
                log.warning("reconcile pass failed: %s", err)
            await asyncio.sleep(self.settings.reconcile_interval)

    async def run_once(self) -> ReconcileReport:
        """One pass over closed runs with active tasks, then over run-less tasks."""
        report = ReconcileReport()
        await self._closed_runs(report)
        await self._runless_tasks(report)
        return report

    async def _closed_runs(self, report: ReconcileReport) -> None:
        started = now()
        since = self._since.strftime("%Y-%m-%dT%H:%M:%SZ")
        client = self.workflows.client
        runs: dict[str, list[WorkflowExecution]] = {}
        async for execution in client.list_workflows(_CLOSED_QUERY.format(since=since), limit=500):
            runs.setdefault(execution.id.removeprefix("task-"), []).append(execution)
        if runs:
            await self._fail_closed_runs(runs, report)
        # Advanced only after a complete pass, so a failed pass is repeated in full.
        self._since = started - timedelta(seconds=max(60.0, 4 * self.settings.reconcile_interval))

    async def _fail_closed_runs(
        self, runs: dict[str, list[WorkflowExecution]], report: ReconcileReport
    ) -> None:
        client = self.workflows.client
        ids = []
        for key in runs:
            try:
                ids.append(uuid.UUID(key))
            except ValueError:
                continue
        for task in await self.repository.get_many(ids):
            execution = _run_of(task, runs[str(task.id)])
            if execution is None or not task.status.is_active:
                continue
            status = execution.status or WorkflowExecutionStatus.TERMINATED
            reason = _REASONS.get(status, f"workflow closed as {status.name}")
            if status is WorkflowExecutionStatus.TERMINATED:
                detail = await _termination_reason(client, execution.id, execution.run_id)
                reason = f"{reason}: {detail}" if detail else reason
            target = TaskStatus.CANCELLED if status is WorkflowExecutionStatus.CANCELED else TaskStatus.FAILED
            write = snapshot_write(
                task,
                status=target,
                event=f"task.{target.value}",
                message=f"reconciled: {reason}",
                error_message=reason if target is TaskStatus.FAILED else None,
                completed_at=now(),
                level="error" if target is TaskStatus.FAILED else "info",
            )
            if await self.repository.apply(write, expect_seq=task.seq):
                if target is TaskStatus.FAILED:
                    report.failed += 1
                else:
                    report.cancelled += 1
                log.info("reconciled task %s: %s", task.id, reason)

    async def _runless_tasks(self, report: ReconcileReport) -> None:
        older_than = now() - timedelta(seconds=self.settings.orphan_grace)
        for task in await self.repository.runless(older_than, limit=100):
            info = await self.workflows.describe(str(task.id))
            if info is not None and info.status is WorkflowExecutionStatus.RUNNING:
                await self.repository.set_run_id(task.id, info.run_id)
                report.adopted += 1
                continue
            if info is not None and info.status is not None and task.status is not TaskStatus.PENDING:
                continue
            try:
                run_id = await self.workflows.start(workflow_input(task, self.settings, task.seq))
            except DomainError as err:
                log.warning("could not start workflow %s: %s", workflow_id_for(str(task.id)), err)
                continue
            await self.repository.set_run_id(task.id, run_id)
            report.started += 1
            log.info("started missing workflow for task %s", task.id)
