"""The retention job's activities: start a ``retention`` task, and delete old final tasks for it.

The scheduled ``RetentionJob`` workflow only calls :meth:`RetentionActivities.start_retention_task`,
which creates an ordinary task; that task's own workflow then runs
:meth:`RetentionActivities.run_retention`. So every run of the job is visible like any other task
(ListTasks, events, logs, the Temporal UI) and is recorded by the single writer of its state.

Audit: the job deletes as an internal admin, but not with one ``task.delete`` row per task (whose
old state is the whole task): the audit log is never deleted, and copying every expired task into it
would keep forever what retention exists to remove. Each page of deletions writes one
``task.retention`` row instead (entity: the retention task; metadata: the deleted ids, their count,
the cutoff), after the page's deletes.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from datetime import UTC, datetime, timedelta

from temporalio import activity
from temporalio.exceptions import ApplicationError

from common_operations.db.audit_repository import AuditEntry
from common_operations.db.bulk_repository import BulkRepository
from common_operations.domain.errors import InvalidTransition, TaskNotFound
from common_operations.domain.principal import Principal
from common_operations.domain.task import CreateTask
from common_operations.domain.workflow_types import (
    RETENTION_ACTIVITY,
    RETENTION_TASK_TYPE,
    START_RETENTION_ACTIVITY,
    BulkJobResult,
    RetentionInput,
)
from common_operations.services.tasks import TaskService

log = logging.getLogger(__name__)

# The identity the job acts as: deleting any task's row and files is an administrator's action.
RETENTION_PRINCIPAL = Principal(subject="retention", roles=frozenset({"admin"}))


class RetentionActivities:
    """Activities of the retention job, bound to one worker's services."""

    def __init__(self, tasks: TaskService, jobs: BulkRepository, *, default_days: float) -> None:
        """Bind the activities to the task service and the query of old final tasks.

        Args:
            tasks: creates retention tasks and deletes tasks (row, events, logs and files).
            jobs: finds final tasks completed before a cutoff.
            default_days: ``bulk.retention_days``, used when a task does not say ``olderThanDays``.
        """
        self._tasks = tasks
        self._jobs = jobs
        self._default_days = default_days

    @activity.defn(name=START_RETENTION_ACTIVITY)
    async def start_retention_task(self) -> str:
        """Create this run's ``retention`` task with the configured age; its id.

        The age is read here, on the worker, so a changed ``bulk.retention_days`` applies from the
        next run without touching the Schedule.
        """
        task = await self._tasks.create_task(
            RETENTION_PRINCIPAL,
            CreateTask(
                task_type=RETENTION_TASK_TYPE,
                entity_type="tasks",
                requested_by="retention",
                params={"olderThanDays": self._default_days},
            ),
        )
        return str(task.id)

    @activity.defn(name=RETENTION_ACTIVITY)
    async def run_retention(self, inp: RetentionInput) -> BulkJobResult:
        """Delete final tasks completed more than ``days`` ago, with their files; the counts.

        Pages through the oldest first. A task that changed meanwhile (retried, or deleted by
        someone else) is skipped, not an error. Cancelled, it returns what it deleted so far.
        """
        days = self._default_days if inp.days is None else inp.days
        if days <= 0:
            raise ApplicationError(f"olderThanDays must be positive, not {days}", non_retryable=True)
        cutoff = datetime.now(UTC) - timedelta(days=days)
        deleted = skipped = 0
        # Rows that could not be deleted stay in the query's answer: remember them, so the next
        # page is not the same page again and the loop ends.
        seen: set[uuid.UUID] = set()
        try:
            while True:
                page = await self._jobs.final_tasks_before(cutoff, inp.batch)
                fresh = [(task_id, files) for task_id, files in page if task_id not in seen]
                removed: list[uuid.UUID] = []
                try:
                    for task_id, files in fresh:
                        seen.add(task_id)
                        if str(task_id) == inp.task_id:
                            continue
                        if await self._delete(task_id, has_files=bool(files)):
                            deleted += 1
                            removed.append(task_id)
                        else:
                            skipped += 1
                        activity.heartbeat(deleted, skipped)
                finally:
                    # Also when cancelled mid-page: what was deleted is recorded.
                    await self._audit(inp.task_id, removed, cutoff, days)
                if not fresh or len(page) < inp.batch:
                    break
        except asyncio.CancelledError:
            details = activity.cancellation_details()
            if details is None or not details.cancel_requested:
                raise  # a worker shutting down: the activity is retried and carries on
            return _result(deleted, skipped, days, stopped=True)
        return _result(deleted, skipped, days)

    async def _audit(
        self, retention_task_id: str, removed: list[uuid.UUID], cutoff: datetime, days: float
    ) -> None:
        """One ``task.retention`` audit row for a page of deleted tasks (none for an empty page).

        A failed write is logged: the tasks are gone either way, and retrying the page would not
        find them again.
        """
        audit = self._tasks.audit
        if audit is None or not removed:
            return
        entry = AuditEntry(
            action="task.retention",
            entity_type="task",
            entity_id=retention_task_id,
            metadata={
                "deleted": [str(task_id) for task_id in removed],
                "count": len(removed),
                "completedBefore": cutoff.isoformat(),
                "olderThanDays": days,
            },
        )
        try:
            await audit.record(RETENTION_PRINCIPAL, entry)
        except Exception:
            log.exception("retention: %d tasks deleted, but their audit row was not written", len(removed))

    async def _delete(self, task_id: uuid.UUID, *, has_files: bool) -> bool:
        """Delete one task through the service; False if it changed meanwhile."""
        try:
            await self._tasks.delete_task(RETENTION_PRINCIPAL, task_id, audited=False)
        except (TaskNotFound, InvalidTransition) as err:
            log.info("retention: task %s skipped: %s", task_id, err)
            return False
        bulk = self._tasks.bulk
        if not has_files and bulk is not None:
            # The service removes the prefix only of tasks that recorded files; anything else a
            # client stored under the task's prefix goes too, or it would outlive its task forever.
            try:
                await bulk.delete_files(task_id)
            except Exception:
                log.exception("retention: task %s deleted, but not all of its stored files", task_id)
        return True


def _result(deleted: int, skipped: int, days: float, *, stopped: bool = False) -> BulkJobResult:
    message = f"deleted {deleted} final tasks older than {days:g} days and their files"
    if skipped:
        message += f"; {skipped} changed meanwhile and were skipped"
    if stopped:
        message += "; stopped on request"
    return BulkJobResult(
        total_records=deleted,
        processed_records=deleted,
        success_records=deleted,
        message=message,
        stopped=stopped,
    )
