"""A task's workflow runs: how one is started, and what is written when one ended unrecorded.

Only a task's own run chain writes its state (``workflows.task_workflow``). Two things happen
outside any run, and both live here so the service and the reconciler share them:

- making sure a task's first run exists (the creator, a cancel and the reconciler may all try; they
  join one run, and none starts after a run has closed);
- recording the end of a run that closed without running code (terminated by an operator, timed
  out): a write guarded by the exact sequence and owner read, which the closed run can no longer
  contest.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from temporalio.client import WorkflowExecutionStatus

from common_operations.config import OperationsSettings
from common_operations.db.repository import TaskRepository
from common_operations.domain.status import TaskStatus
from common_operations.domain.task import RecordCounts, Task
from common_operations.domain.workflow_types import (
    MirrorWrite,
    ProgressSnapshot,
    TaskState,
    TaskWorkflowInput,
    workflow_id_for,
)
from common_operations.infra.temporal import RunAlreadyClosed, RunInfo, TaskWorkflows

log = logging.getLogger(__name__)

_REASONS = {
    WorkflowExecutionStatus.TERMINATED: "workflow terminated by an operator",
    WorkflowExecutionStatus.TIMED_OUT: "workflow run timed out",
    WorkflowExecutionStatus.FAILED: "workflow failed before recording the outcome",
    WorkflowExecutionStatus.CANCELED: "workflow cancelled before it could record the cancellation",
    WorkflowExecutionStatus.COMPLETED: "workflow completed without recording the outcome",
}


def now() -> datetime:
    """The current time, time-zone aware."""
    return datetime.now(UTC)


def workflow_input(
    task: Task, settings: OperationsSettings, *, retry_message: str | None = None
) -> TaskWorkflowInput:
    """What a new run of ``task`` starts from: the row as read (its sequence is the one to claim)."""
    return TaskWorkflowInput(
        task_id=str(task.id),
        task_type=task.task_type,
        entity_type=task.entity_type,
        requested_by=task.requested_by,
        handler=settings.handler_for(task.task_type),
        task_timeout_seconds=settings.task_timeout,
        state=TaskState(
            status=task.status.value,
            seq=task.seq,
            retry_count=task.retry_count,
            total_records=task.counts.total,
            processed_records=task.counts.processed,
            success_records=task.counts.success,
            failed_records=task.counts.failed,
            started_at=task.started_at,
            completed_at=task.completed_at,
            error_message=task.error_message,
            output_file_url=task.output_file_url,
        ),
        max_retries=task.max_retries,
        scheduled_at=task.scheduled_at if task.status is TaskStatus.SCHEDULED else None,
        params=task.params,
        limits=settings.run_limits(),
        retry_message=retry_message,
        input_file=_input_file(task),
        upload_expires_at=_upload_expires_at(task),
        callback_url=task.callback_url,
    )


def _input_file(task: Task) -> dict[str, Any] | None:
    ref = task.files.get("input")
    return dict(ref) if isinstance(ref, dict) and ref.get("key") else None


def _upload_expires_at(task: Task) -> datetime | None:
    ref = _input_file(task)
    when = ref.get("uploadExpiresAt") if ref else None
    return datetime.fromisoformat(when) if isinstance(when, str) else None


def with_snapshot(task: Task, snapshot: ProgressSnapshot) -> Task:
    """The task as its workflow knows it right now (the mirror may be up to an interval behind)."""
    return replace(
        task,
        status=TaskStatus(snapshot.status),
        counts=RecordCounts(
            total=snapshot.total_records,
            processed=snapshot.processed_records,
            success=snapshot.success_records,
            failed=snapshot.failed_records,
        ),
        error_message=snapshot.error_message,
        retry_count=snapshot.retry_count,
        started_at=snapshot.started_at or task.started_at,
        completed_at=snapshot.completed_at,
        next_retry_at=snapshot.next_retry_at,
        seq=max(task.seq, snapshot.seq),
    )


class TaskRuns:
    """Starts a task's first run and records runs that ended without recording it themselves."""

    def __init__(
        self, repository: TaskRepository, workflows: TaskWorkflows, settings: OperationsSettings
    ) -> None:
        """Work on the mirror in ``repository`` and the runs behind ``workflows``."""
        self.repository = repository
        self.workflows = workflows
        self.settings = settings

    async def ensure_started(self, task: Task) -> str | None:
        """Make sure the task's first run exists (joining one that already runs).

        Returns:
            The run id, or None if a run had already closed (its end is then recorded here).
        """
        try:
            return await self.workflows.start(workflow_input(task, self.settings))
        except RunAlreadyClosed:
            info = await self.workflows.describe(str(task.id))
            if info is not None and not info.running:
                await self.record_closed_run(task, info)
            return None

    async def record_closed_run(self, task: Task, info: RunInfo) -> TaskStatus | None:
        """Record the end of a run that closed without writing it (guarded by sequence and owner).

        Returns:
            The status written, or None if there was nothing to record or the row moved meanwhile.
        """
        retry_pending = task.next_retry_at is not None
        if info.running or not (task.status.is_active or retry_pending):
            return None
        status = info.status or WorkflowExecutionStatus.TERMINATED
        reason = _REASONS.get(status, f"workflow closed as {status.name}")
        if status in (WorkflowExecutionStatus.TERMINATED, WorkflowExecutionStatus.FAILED):
            detail = await self.workflows.close_reason(workflow_id_for(str(task.id)), info.run_id)
            reason = f"{reason}: {detail}" if detail else reason
        cancelled = status is WorkflowExecutionStatus.CANCELED
        target = TaskStatus.CANCELLED if cancelled else TaskStatus.FAILED
        if task.status is TaskStatus.FAILED:
            message = f"reconciled: automatic retry abandoned, {reason}"
        else:
            message = f"reconciled: {reason}"
        at = now()
        write = MirrorWrite(
            task_id=str(task.id),
            seq=task.seq + 1,
            run_id=info.run_id,
            owner=task.owner_run_id,
            status=target.value,
            event_type=f"task.{target.value}",
            message=message,
            level="info" if cancelled else "error",
            total_records=task.counts.total,
            processed_records=task.counts.processed,
            success_records=task.counts.success,
            failed_records=task.counts.failed,
            progress_percentage=task.progress_percentage,
            started_at=task.started_at,
            completed_at=at,
            error_message=None if cancelled else (task.error_message if retry_pending else reason),
            output_file_url=task.output_file_url,
            retry_count=task.retry_count,
            next_retry_at=None,
            at=at,
        )
        closed_owner = f"closed:{info.run_id}"
        if not await self.repository.apply_guarded(write, expect_seq=task.seq, new_owner=closed_owner):
            return None
        log.info("task %s: %s", task.id, message)
        return target
