"""The bulk action job: cancel or retry every task matching a filter, as the operator who asked.

It runs as the activity of a ``bulk_action`` task (``TaskWorkflow`` writes its transitions, the
activity its progress, as the import and export jobs do). Every task goes through
:class:`TaskService` as the actor recorded by the bulk-actions service, so the role table, the audit
rows of changes to other principals' tasks and the rate limits apply to each one (a rate-limited
call waits for its turn rather than failing the job).

Paging: the matching tasks of one status at a time, newest first, each page asking for tasks created
no later than the oldest of the previous page (a cursor, since the tasks acted on leave the filter
and offsets would skip). Tasks created after the bulk action are never reached. Ids already handled
at the cursor's instant are remembered, so a task refused once is not tried again.

Resuming: after each task the checkpoint (status, cursor, ids at the cursor, counts) is the
activity's heartbeat; a retried activity (a worker crash, Temporal unreachable) starts from it. A
task handled after the last heartbeat that reached Temporal (at most ``max_heartbeat_throttle_interval``
before the crash) is not acted on twice: cancelled or retried, it no longer matches the filter.
It is then missing from the counts, which say so by being below the total.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, TypeVar

from temporalio import activity
from temporalio.exceptions import ApplicationError

from common_operations.db.bulk_repository import BulkRepository
from common_operations.domain.bulk_actions import (
    PAGE_SIZE,
    BulkAction,
    BulkActionKind,
    bulk_action_from_params,
)
from common_operations.domain.errors import DomainError, RateLimited, ServiceUnavailable, ValidationFailed
from common_operations.domain.principal import Principal
from common_operations.domain.task import Task
from common_operations.domain.workflow_types import (
    BULK_ACTION_ACTIVITY,
    BULK_INPUT_ERROR,
    BulkJobInput,
    BulkJobResult,
)
from common_operations.services.bulk_actions import BulkActionService
from common_operations.services.tasks import TaskService

log = logging.getLogger(__name__)

T = TypeVar("T")

# How long the job waits for the audit row naming its actor (written right after the task).
ACTOR_WAIT_SECONDS = 30.0
# Refusals quoted in the final message (the rest are counted).
QUOTED_REFUSALS = 5


def _input_error(message: str) -> ApplicationError:
    return ApplicationError(message, type=BULK_INPUT_ERROR, non_retryable=True)


@dataclass(slots=True)
class Checkpoint:
    """Where the job stands; the activity's heartbeat details, so a retried activity resumes here.

    Attributes:
        phase: index into the action's statuses.
        cursor: pages ask for tasks created at or before this instant (None: the job's own start).
        done: ids handled whose creation instant equals ``cursor`` (they reappear on the next page).
        total: matching tasks counted when the job began.
        processed / success / failed: tasks handled, changed, refused.
        refusals: the first few refusals, quoted in the result.
    """

    phase: int = 0
    cursor: datetime | None = None
    done: list[str] = field(default_factory=list)
    total: int = 0
    processed: int = 0
    success: int = 0
    failed: int = 0
    refusals: list[str] = field(default_factory=list)
    counted: bool = False

    def to_details(self) -> dict[str, Any]:
        """JSON-friendly heartbeat details."""
        return {
            "phase": self.phase,
            "cursor": self.cursor.isoformat() if self.cursor else None,
            "done": self.done,
            "counts": [self.total, self.processed, self.success, self.failed],
            "refusals": self.refusals,
            "counted": self.counted,
        }

    @classmethod
    def from_details(cls, details: Any) -> Checkpoint:
        """The checkpoint a previous attempt heartbeated (a fresh one if none, or unreadable)."""
        if not isinstance(details, dict):
            return cls()
        try:
            total, processed, success, failed = (int(n) for n in details["counts"])
            cursor = details.get("cursor")
            return cls(
                phase=int(details["phase"]),
                cursor=datetime.fromisoformat(cursor) if cursor else None,
                done=[str(i) for i in details.get("done") or []],
                total=total,
                processed=processed,
                success=success,
                failed=failed,
                refusals=[str(r) for r in details.get("refusals") or []],
                counted=bool(details.get("counted")),
            )
        except (KeyError, TypeError, ValueError):
            return cls()

    @property
    def counts(self) -> tuple[int, int, int, int]:
        """(total, processed, success, failed); the total never below what was processed."""
        return (max(self.total, self.processed), self.processed, self.success, self.failed)


def _cancel_requested() -> bool:
    details = activity.cancellation_details()
    return details is not None and details.cancel_requested


class BulkActionActivities:
    """The bulk action activity, bound to one worker's services."""

    def __init__(self, tasks: TaskService, jobs: BulkRepository) -> None:
        """Bind the activity to the task service (it acts through it) and the progress writes.

        Args:
            tasks: lists, cancels and retries tasks as the actor; its audit log names the actor.
            jobs: mirrors the job's progress, fenced by the workflow's owner token and sequence.
        """
        self._tasks = tasks
        self._jobs = jobs
        self._bulk = BulkActionService(tasks)

    @activity.defn(name=BULK_ACTION_ACTIVITY)
    async def run_bulk_action(self, inp: BulkJobInput) -> BulkJobResult:
        """Cancel or retry every task the bulk action's filter matches; the counts.

        Cancelled, it stops after the task at hand and returns what it did (``stopped``).

        Raises:
            ApplicationError: non-retryable when the task is not a bulk action made through the
                bulk-actions API (no recorded actor) or its params are not a bulk action's.
        """
        try:
            action = bulk_action_from_params(inp.params)
        except ValidationFailed as err:
            raise _input_error(f"the task's params are not a bulk action: {err.message}") from None
        own = await self._tasks.repository.get(uuid.UUID(inp.task_id))
        if own is None:
            raise _input_error("the bulk action's task no longer exists")
        actor = await self._await_actor(own)
        details = activity.info().heartbeat_details
        point = Checkpoint.from_details(details[0] if details else None)
        job = _Job(self, inp, action, actor, own, point)
        try:
            return await job.run()
        except asyncio.CancelledError:
            if not _cancel_requested():
                raise  # a worker shutting down: the activity is retried and resumes
            return job.result(stopped=True)

    async def _await_actor(self, own: Task) -> Principal:
        """The principal recorded for the bulk action, waiting briefly for its audit row."""
        deadline = time.monotonic() + ACTOR_WAIT_SECONDS
        while True:
            actor = await self._bulk.actor_of(own.id, own.created_by)
            if actor is not None:
                return actor
            if time.monotonic() > deadline:
                raise _input_error(
                    "no record of who asked for this bulk action: start bulk actions with "
                    "POST /api/v1/operations/bulk-actions (or `common-operations tasks bulk`), not CreateTask"
                )
            activity.heartbeat()
            await asyncio.sleep(0.2)


class _Job:
    """One run of a bulk action's activity."""

    def __init__(
        self,
        owner: BulkActionActivities,
        inp: BulkJobInput,
        action: BulkAction,
        actor: Principal,
        own: Task,
        point: Checkpoint,
    ) -> None:
        self.tasks = owner._tasks
        self.jobs = owner._jobs
        self.bulk_type = owner._bulk.task_type()
        self.inp = inp
        self.action = action
        self.actor = actor
        self.own = own
        self.point = point
        # Never past the bulk action's own creation: tasks created later were not asked for.
        limit = action.filter.until
        created = own.created_at
        self.until = min(limit, created) if limit and created else (limit or created)
        self._last_write = 0.0

    async def run(self) -> BulkJobResult:
        p = self.point
        if not p.counted:
            p.total = await self._count()
            p.counted = True
            self._heartbeat()
        await self._report(force=True)
        statuses = self.action.statuses
        while p.phase < len(statuses):
            status = statuses[p.phase]
            query = self.action.filter.query(status, until=p.cursor or self.until)
            page = await self._call(lambda q=query: self.tasks.list_tasks(self.actor, q))  # type: ignore[misc]
            done = set(p.done)
            fresh = [t for t in page.items if str(t.id) not in done]
            for task in fresh:
                await self._handle(task)
                p.done.append(str(task.id))
                self._heartbeat()
                await self._report()
            if len(page.items) < PAGE_SIZE:
                p.phase, p.cursor, p.done = p.phase + 1, None, []
                self._heartbeat()
                continue
            oldest = page.items[-1].created_at
            assert oldest is not None
            if not fresh:
                # A whole page of tasks created in the same microsecond, all handled: step past it.
                p.cursor, p.done = oldest - timedelta(microseconds=1), []
            else:
                p.cursor = oldest
                p.done = [str(t.id) for t in page.items if t.created_at == oldest]
            self._heartbeat()
        await self._report(force=True)
        return self.result()

    async def _count(self) -> int:
        total = 0
        for status in self.action.statuses:
            query = self.action.filter.query(status, until=self.until, page_size=1)
            page = await self._call(lambda q=query: self.tasks.list_tasks(self.actor, q))  # type: ignore[misc]
            total += page.total
        return total

    async def _handle(self, task: Task) -> None:
        p = self.point
        if task.id == self.own.id or (
            task.task_type == self.bulk_type and self.action.filter.task_type != self.bulk_type
        ):
            # Not itself, nor another bulk action unless the filter asks for bulk actions.
            p.total = max(0, p.total - 1)
            return
        try:
            if self.action.action is BulkActionKind.CANCEL:
                reason = f"bulk action {self.own.id}" + (
                    f": {self.action.reason}" if self.action.reason else ""
                )
                await self._call(lambda: self.tasks.cancel_task(self.actor, task.id, reason))
            else:
                await self._call(lambda: self.tasks.retry_task(self.actor, task.id))
        except ServiceUnavailable:
            raise  # Temporal or Postgres away: the activity is retried from its checkpoint
        except DomainError as err:
            p.failed += 1
            if len(p.refusals) < QUOTED_REFUSALS:
                p.refusals.append(f"{task.id}: {err.message}")
            log.info("bulk action %s: task %s refused: %s", self.own.id, task.id, err.message)
        else:
            p.success += 1
        p.processed += 1

    async def _call(self, fn: Callable[[], Awaitable[T]]) -> T:
        """``fn()``, waiting out rate limits (heartbeating) instead of failing the job."""
        while True:
            try:
                return await fn()
            except RateLimited as err:
                waited = 0.0
                while waited < err.retry_after:
                    self._heartbeat()
                    step = min(1.0, err.retry_after - waited)
                    await asyncio.sleep(step)
                    waited += step

    def _heartbeat(self) -> None:
        activity.heartbeat(self.point.to_details())

    def _note(self) -> str:
        total, processed, success, failed = self.point.counts
        verb = "cancelled" if self.action.action is BulkActionKind.CANCEL else "retried"
        return (
            f"bulk {self.action.action.value}: {processed}/{total} tasks handled "
            f"({success} {verb}, {failed} refused)"
        )

    async def _report(self, *, force: bool = False) -> None:
        """Mirror the counts at most once per progress interval (the ``processing`` row only)."""
        now = time.monotonic()
        if not force and now - self._last_write < self.inp.progress_interval_seconds:
            return
        self._last_write = now
        await self.jobs.write_progress(
            self.inp.task_id, self.inp.owner, self.inp.seq, self.point.counts, self._note()
        )

    def result(self, *, stopped: bool = False) -> BulkJobResult:
        """The job's counts and its closing message (with the first refusals)."""
        total, processed, success, failed = self.point.counts
        verb = "cancelled" if self.action.action is BulkActionKind.CANCEL else "retried"
        message = f"{verb} {success} of {total} matching tasks ({self.action.describe()})"
        if failed:
            message += f"; {failed} refused: " + "; ".join(self.point.refusals)
            if failed > len(self.point.refusals):
                message += f"; and {failed - len(self.point.refusals)} more"
        if stopped:
            message += "; stopped on request"
        return BulkJobResult(
            total_records=total,
            processed_records=processed,
            success_records=success,
            failed_records=failed,
            message=message,
            stopped=stopped,
        )
