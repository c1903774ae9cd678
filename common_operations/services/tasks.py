"""TaskService: every task use case, called by both REST and gRPC."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from common_operations.config import OperationsSettings
from common_operations.db.repository import TaskRepository
from common_operations.domain.errors import (
    InvalidTransition,
    NotAvailable,
    ServiceUnavailable,
    TaskNotFound,
)
from common_operations.domain.principal import Principal
from common_operations.domain.status import (
    TaskStatus,
    ensure_accepts_reports,
    ensure_cancellable,
    ensure_deletable,
    ensure_retryable,
)
from common_operations.domain.task import (
    MAX_PAGE_SIZE,
    CreateTask,
    Page,
    PageRequest,
    ProgressReport,
    Task,
    TaskEvent,
    TaskLog,
    TaskQuery,
    validate_create,
    validate_paging,
    validate_query,
    validate_report_shape,
)
from common_operations.domain.workflow_types import MirrorWrite, TaskWorkflowInput
from common_operations.infra.temporal import TaskWorkflows


@dataclass(frozen=True, slots=True)
class DownloadUrl:
    """Where a task's output can be downloaded."""

    url: str
    file_name: str | None
    expires_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class HealthReport:
    """Overall status and the status of each backing service.

    ``healthy`` covers the required services (Postgres, Temporal); an optional one that is down
    (Redis) only makes the report ``degraded``.
    """

    healthy: bool
    components: dict[str, str] = field(default_factory=dict)
    degraded: bool = False


def now() -> datetime:
    """The current time, time-zone aware."""
    return datetime.now(UTC)


def workflow_input(task: Task, settings: OperationsSettings, seq: int) -> TaskWorkflowInput:
    """What a new run of ``task`` starts from."""
    return TaskWorkflowInput(
        task_id=str(task.id),
        task_type=task.task_type,
        entity_type=task.entity_type,
        requested_by=task.requested_by,
        status=task.status.value,
        handler=settings.handler_for(task.task_type),
        task_timeout_seconds=settings.task_timeout,
        seq=seq,
        retry_count=task.retry_count,
        max_retries=task.max_retries,
        scheduled_at=task.scheduled_at if task.status is TaskStatus.SCHEDULED else None,
        params=task.params,
        total_records=task.counts.total,
    )


def snapshot_write(
    task: Task, *, status: TaskStatus, event: str, message: str, **changes: Any
) -> MirrorWrite:
    """A mirror write made by the service (not a workflow): the row's state with ``changes``."""
    values: dict[str, Any] = {
        "task_id": str(task.id),
        "seq": task.seq + 1,
        "run_id": "",
        "status": status.value,
        "event_type": event,
        "message": message,
        "total_records": task.counts.total,
        "processed_records": task.counts.processed,
        "success_records": task.counts.success,
        "failed_records": task.counts.failed,
        "progress_percentage": task.progress_percentage,
        "started_at": task.started_at,
        "completed_at": task.completed_at,
        "error_message": task.error_message,
        "at": now(),
    }
    values.update(changes)
    return MirrorWrite(**values)


class TaskService:
    """Task use cases. Raises :class:`DomainError` subclasses that transports map once."""

    def __init__(
        self,
        repository: TaskRepository,
        workflows: TaskWorkflows,
        settings: OperationsSettings,
        *,
        optional_probes: Mapping[str, Callable[[], Awaitable[None]]] | None = None,
    ) -> None:
        """Wire the service to its repository, Temporal gateway and settings.

        Args:
            repository: the Postgres mirror.
            workflows: the Temporal gateway.
            settings: task execution rules.
            optional_probes: health checks of optional services (e.g. ``{"redis": ping}``).
        """
        self.repository = repository
        self.workflows = workflows
        self.settings = settings
        self.optional_probes = dict(optional_probes or {})

    async def _get(self, task_id: uuid.UUID) -> Task:
        task = await self.repository.get(task_id)
        if task is None:
            raise TaskNotFound(f"task {task_id} not found", id=str(task_id))
        return task

    async def create_task(self, principal: Principal, cmd: CreateTask) -> Task:
        """Record a task and start its workflow.

        ``requestedBy`` defaults to the caller. The row is written first so the task is readable at
        once; if the workflow cannot be started the task is marked failed and the error raised, and
        if this process dies in between, the reconciler starts the workflow. The returned task is
        the row as written, with the id of the run just started.
        """
        max_retries = self.settings.default_max_retries if cmd.max_retries is None else cmd.max_retries
        cmd = validate_create(
            replace(cmd, requested_by=cmd.requested_by or principal.subject, max_retries=max_retries)
        )
        self.settings.handler_for(cmd.task_type)
        created = now()
        scheduled = cmd.scheduled_at is not None and cmd.scheduled_at > created
        task = Task(
            id=uuid.uuid4(),
            task_type=cmd.task_type,
            entity_type=cmd.entity_type,
            status=TaskStatus.SCHEDULED if scheduled else TaskStatus.PENDING,
            priority=cmd.priority,
            requested_by=cmd.requested_by,
            params=cmd.params,
            file_name=cmd.file_name,
            file_size=cmd.file_size,
            scheduled_at=cmd.scheduled_at,
            max_retries=max_retries,
            created_at=created,
            updated_at=created,
        )
        when = f" scheduled for {cmd.scheduled_at.isoformat()}" if scheduled and cmd.scheduled_at else ""
        await self.repository.insert_task(task, f"task created by {principal.subject}{when}")
        # The row is not read back: it is the one just written, and its run id reaches the row
        # with the run's first mirror write (or the reconciler's adoption of a quiet run).
        return replace(task, run_id=await self._start_run(task, seq=0))

    async def _start_run(self, task: Task, *, seq: int) -> str:
        try:
            run_id = await self.workflows.start(workflow_input(task, self.settings, seq))
        except ServiceUnavailable as err:
            current = await self._get(task.id)
            await self.repository.apply(
                snapshot_write(
                    current,
                    status=TaskStatus.FAILED,
                    event="task.failed",
                    message=f"could not start the workflow: {err.message}",
                    error_message=f"could not start the workflow: {err.message}",
                    completed_at=now(),
                    level="error",
                ),
                expect_seq=current.seq,
            )
            raise
        return run_id

    async def get_task(self, principal: Principal, task_id: uuid.UUID) -> Task:
        """One task.

        Raises:
            TaskNotFound: no such task.
        """
        return await self._get(task_id)

    async def list_tasks(self, principal: Principal, query: TaskQuery) -> Page[Task]:
        """Tasks matching the filters, newest first."""
        return await self.repository.page(validate_query(query))

    async def cancel_task(self, principal: Principal, task_id: uuid.UUID, reason: str | None = None) -> Task:
        """Cancel a scheduled, pending or processing task through its workflow.

        ``reason`` (optional, free text) is recorded in the task's event and log line and passed to
        Temporal as the cancellation reason.

        Waits up to ``operations.cancel_wait`` seconds for the workflow's cleanup and returns the
        task as it then stands. A task whose run is gone is cancelled in the mirror directly.

        Raises:
            TaskNotFound: no such task.
            InvalidTransition: the task is completed, failed or cancelled.
        """
        task = await self._get(task_id)
        ensure_cancellable(task.status)
        requested = await self.workflows.cancel(str(task_id), self.settings.cancel_wait)
        if not requested:
            await self.repository.apply(
                snapshot_write(
                    task,
                    status=TaskStatus.CANCELLED,
                    event="task.cancelled",
                    message=f"task cancelled by {principal.subject} (no workflow run was active)",
                    completed_at=now(),
                ),
                expect_seq=task.seq,
            )
        return await self._get(task_id)

    async def retry_task(self, principal: Principal, task_id: uuid.UUID) -> Task:
        """Start a new run of a failed task that has retries left.

        Raises:
            TaskNotFound: no such task.
            InvalidTransition: the task is not failed (or changed meanwhile).
            RetryLimitExceeded: ``retryCount`` reached ``maxRetries``.
        """
        task = await self._get(task_id)
        ensure_retryable(task.status, task.retry_count, task.max_retries)
        attempt = task.retry_count + 1
        write = snapshot_write(
            task,
            status=TaskStatus.PENDING,
            event="task.retried",
            message=f"retry {attempt} of {task.max_retries} requested by {principal.subject}",
            error_message=None,
            completed_at=None,
        )
        if not await self.repository.apply(
            write, expect_seq=task.seq, retry_count=attempt, clear_run_id=True
        ):
            raise InvalidTransition("the task changed while the retry was requested; read it again")
        retried = await self._get(task_id)
        return replace(retried, run_id=await self._start_run(retried, seq=retried.seq))

    async def update_progress(self, principal: Principal, task_id: uuid.UUID, report: ProgressReport) -> Task:
        """Apply an external worker's progress report through the task's workflow.

        The report reaches the workflow as a Temporal Update; its validator rejects reports on
        finished tasks, negative counts and ``processed > total`` before they reach history.

        Raises:
            TaskNotFound: no such task.
            ValidationFailed: the report is inconsistent.
            InvalidTransition: the task no longer accepts reports.
        """
        validate_report_shape(report)
        task = await self._get(task_id)
        # Checked here too (the workflow's validator has the last word) so that a report on a
        # finished task is refused without a round trip to a run that may no longer exist.
        ensure_accepts_reports(task.status)
        await self.workflows.report_progress(str(task_id), report)
        return await self._get(task_id)

    async def delete_task(self, principal: Principal, task_id: uuid.UUID) -> None:
        """Delete a finished or failed task with its logs and events.

        Raises:
            TaskNotFound: no such task.
            InvalidTransition: the task is pending, scheduled or processing.
        """
        task = await self._get(task_id)
        ensure_deletable(task.status)
        if not await self.repository.delete_closed(task_id):
            current = await self._get(task_id)
            ensure_deletable(current.status)
            raise InvalidTransition("the task changed while it was being deleted; read it again")

    async def task_logs(self, principal: Principal, task_id: uuid.UUID, page: PageRequest) -> Page[TaskLog]:
        """A page of the task's log lines, oldest first."""
        validate_paging(page.page, page.page_size, MAX_PAGE_SIZE)
        await self._get(task_id)
        return await self.repository.logs(task_id, page)

    async def task_events(
        self, principal: Principal, task_id: uuid.UUID, page: PageRequest
    ) -> Page[TaskEvent]:
        """A page of the task's events in sequence order."""
        validate_paging(page.page, page.page_size, MAX_PAGE_SIZE)
        await self._get(task_id)
        return await self.repository.events(task_id, page)

    async def download_url(self, principal: Principal, task_id: uuid.UUID) -> DownloadUrl:
        """Where the task's output file can be fetched.

        Raises:
            TaskNotFound: no such task.
            NotAvailable: the task has no output file (yet).
        """
        task = await self._get(task_id)
        if not task.output_file_url:
            raise NotAvailable(
                f"task {task_id} has no output file (status {task.status.value})", id=str(task_id)
            )
        return DownloadUrl(url=task.output_file_url, file_name=task.file_name)

    async def health(self) -> HealthReport:
        """Reachability of Postgres and Temporal (required) and of optional services."""
        required = {"database": self.repository.ping, "temporal": self.workflows.ping}
        probes = {**required, **self.optional_probes}
        results = await asyncio.gather(*(_probe(p) for p in probes.values()))
        components = dict(zip(probes, results, strict=True))
        return HealthReport(
            healthy=all(components[name] == "up" for name in required),
            components=components,
            degraded=any(components[name] != "up" for name in self.optional_probes),
        )


async def _probe(probe: Callable[[], Awaitable[None]]) -> str:
    try:
        await asyncio.wait_for(probe(), timeout=5)
    except Exception as err:
        return f"down: {type(err).__name__}: {err}"
    return "up"
