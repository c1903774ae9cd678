"""TaskService: every task use case, called by both REST and gRPC.

The service never writes a task's state: it inserts the row, then every change is made by the
task's workflow (through Temporal: start, Update, cancel) and mirrored by it. That single writer is
what keeps the API's view equal to what the workflow did, whatever races between callers, retries,
reconcilers and crashes.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime

from common_operations.config import OperationsSettings, WebhookSettings
from common_operations.db.audit_repository import AuditLog
from common_operations.db.repository import TaskRepository
from common_operations.domain.errors import (
    IdempotencyKeyReused,
    InvalidTransition,
    NotAvailable,
    RateLimited,
    ServiceUnavailable,
    TaskNotFound,
    ValidationFailed,
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
    parse_cancel_reason,
    validate_create,
    validate_paging,
    validate_query,
    validate_report_shape,
)
from common_operations.domain.workflow_types import HandlerKind
from common_operations.infra.task_cache import TaskCache
from common_operations.infra.temporal import TaskWorkflows
from common_operations.infra.webhooks import check_callback_url
from common_operations.services.bulk import BulkService, PreparedFiles
from common_operations.services.idempotency import request_hash, validate_key
from common_operations.services.limits import TaskLimits
from common_operations.services.runs import TaskRuns, now, with_snapshot, workflow_input

log = logging.getLogger(__name__)

# How often a retry polls the mirror for its new run's first write.
_RETRY_POLL_SECONDS = 0.02


@dataclass(frozen=True, slots=True)
class DownloadUrl:
    """Where a task's output can be downloaded."""

    url: str
    file_name: str | None
    expires_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class CreatedTask:
    """The answer to CreateTask: the task, and whether this request created it.

    ``created`` is False when an earlier request with the same idempotency key and body did (REST
    answers 200 instead of 201).
    """

    task: Task
    created: bool = True


@dataclass(frozen=True, slots=True)
class HealthReport:
    """Overall status and the status of each backing service.

    ``healthy`` covers the required services (Postgres, Temporal); an optional one that is down
    (Redis, the reconciler, a stuck workflow) only makes the report ``degraded``.
    """

    healthy: bool
    components: dict[str, str] = field(default_factory=dict)
    degraded: bool = False


class TaskService:
    """Task use cases. Raises :class:`DomainError` subclasses that transports map once."""

    def __init__(
        self,
        repository: TaskRepository,
        workflows: TaskWorkflows,
        settings: OperationsSettings,
        *,
        optional_probes: Mapping[str, Callable[[], Awaitable[None]]] | None = None,
        bulk: BulkService | None = None,
        cache: TaskCache | None = None,
        webhooks: WebhookSettings | None = None,
        audit: AuditLog | None = None,
        limits: TaskLimits | None = None,
    ) -> None:
        """Wire the service to its repository, Temporal gateway and settings.

        Args:
            repository: the Postgres mirror.
            workflows: the Temporal gateway.
            settings: task execution rules.
            optional_probes: health checks of optional parts (e.g. ``{"redis": ping}``); a probe
                that raises makes the report degraded, with the exception's text.
            bulk: files and options of built-in import/export tasks (None: such tasks are refused).
            cache: GetTask's Redis read-through cache (None: GetTask reads Postgres).
            webhooks: what a ``callbackUrl`` is checked against (None: no secret, so refused).
            audit: the admin audit log (None: privileged actions are not recorded; tests only).
            limits: rate limits and the unfinished-task cap (None: no limits).
        """
        self.repository = repository
        self.workflows = workflows
        self.settings = settings
        self.runs = TaskRuns(repository, workflows, settings)
        self.optional_probes = dict(optional_probes or {})
        self.bulk = bulk
        self.cache = cache
        self.webhooks = webhooks or WebhookSettings()
        self.audit = audit
        self.limits = limits or TaskLimits()

    async def _get(self, task_id: uuid.UUID) -> Task:
        task = await self.repository.get(task_id)
        if task is None:
            raise _not_found(task_id)
        return task

    async def create_task(self, principal: Principal, cmd: CreateTask) -> Task:
        """Record a task and start its workflow: :meth:`create`'s task (every rule lives there)."""
        return (await self.create(principal, cmd)).task

    async def create(self, principal: Principal, cmd: CreateTask) -> CreatedTask:
        """Record a task and start its workflow.

        ``requestedBy`` defaults to the caller. The row is written first so the task is readable at
        once. If Temporal refuses the start for good (an invalid or rejected request) the row is
        removed and the error raised: the task never existed. If the answer is lost (Temporal
        unreachable), the task stays ``pending`` and the reconciler starts (or adopts) its run.

        With an idempotency key, the key is stored with the row (same statement): the caller's
        repeated request with the same key and body gets the task of the first one
        (``created=False``), also when both arrive at once; the key lives as long as its task.

        Raises:
            IdempotencyKeyReused: the caller used the key before with a different request.
        """
        await self.limits.check(principal, "create")
        max_retries = self.settings.default_max_retries if cmd.max_retries is None else cmd.max_retries
        cmd = validate_create(
            replace(cmd, requested_by=cmd.requested_by or principal.subject, max_retries=max_retries)
        )
        await self.limits.check_unfinished(principal, cmd.requested_by or principal.subject)
        if cmd.callback_url is not None:
            # Before anything is written: a refused URL (SSRF rules) means no task at all.
            await check_callback_url(cmd.callback_url, self.webhooks)
        key = None if cmd.idempotency_key is None else validate_key(cmd.idempotency_key)
        handler = self.settings.handler_for(cmd.task_type)
        task_id = uuid.uuid4()
        prepared, source_task_id = PreparedFiles(files={}), None
        if handler.kind.is_bulk:
            if self.bulk is None:
                raise ServiceUnavailable("built-in import and export are not available in this process")
            prepared = self.bulk.prepare(handler.kind, task_id, cmd)
            source_task_id = _source_task_id(cmd.params)
        created = now()
        scheduled = cmd.scheduled_at is not None and cmd.scheduled_at > created
        task = Task(
            id=task_id,
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
            files=prepared.files,
            source_task_id=source_task_id,
            callback_url=cmd.callback_url,
        )
        when = f" scheduled for {cmd.scheduled_at.isoformat()}" if scheduled and cmd.scheduled_at else ""
        message = f"task created by {principal.subject}{when}"
        if key is None:
            await self.repository.insert_task(task, message)
        elif (earlier := await self._insert_once(principal, cmd, key, task, message)) is not None:
            return CreatedTask(self._replayed(earlier, cmd), created=False)
        try:
            run_id = await self.runs.ensure_started(task)
        except (ValidationFailed, RateLimited):
            await self.repository.delete_unstarted(task.id)
            raise
        except ServiceUnavailable as err:
            log.warning("task %s: workflow not started (%s); the reconciler will start it", task.id, err)
            run_id = None
        # The row is not read back: it is the one just written, and its run id reaches the row
        # with the run's first mirror write (or the reconciler's adoption of a quiet run).
        upload = prepared.upload
        return CreatedTask(
            replace(
                task,
                run_id=run_id,
                upload_url=upload.url if upload else None,
                upload_url_expires_at=upload.expires_at if upload else None,
            )
        )

    async def _insert_once(
        self, principal: Principal, cmd: CreateTask, key: str, task: Task, message: str
    ) -> Task | None:
        """Insert ``task`` under the caller's key; the earlier request's task if the key is taken.

        ``cmd`` is the request after defaults and validation (its fingerprint is compared).
        """
        digest = request_hash(cmd)
        stored = await self.repository.insert_task_once(
            task, message, principal=principal.subject, key=key, request_hash=digest
        )
        if stored is None:
            return None
        if stored.request_hash != digest:
            raise IdempotencyKeyReused(
                "this idempotency key was used with a different request; use a new key",
                field="idempotencyKey",
                task_id=str(stored.task_id),
            )
        return await self._get(stored.task_id)

    def _replayed(self, task: Task, cmd: CreateTask) -> Task:
        """The earlier request's task; an import still waiting for its file gets a fresh upload URL."""
        if self.bulk is None or task.status not in (TaskStatus.PENDING, TaskStatus.SCHEDULED):
            return task
        kind = self.settings.handler_for(task.task_type).kind
        upload = self.bulk.prepare(kind, task.id, cmd).upload if kind.is_bulk else None
        if upload is None:
            return task
        return replace(task, upload_url=upload.url, upload_url_expires_at=upload.expires_at)

    async def retry_failed_rows(
        self,
        principal: Principal,
        task_id: uuid.UUID,
        *,
        file_name: str | None = None,
        file_size: int | None = None,
    ) -> Task:
        """A new import of only the rows a finished import rejected, linked to it (``sourceTaskId``).

        Without ``file_name`` the new task takes the rejected rows from the source's input as they
        were; with it, the caller uploads the corrected rows to the returned URL. The source keeps
        its counts; the new task counts its own.

        Raises:
            TaskNotFound: no such task.
            InvalidTransition: the task is not a finished import, or has no failed rows.
        """
        await self.limits.check(principal, "change")
        source = await self._get(task_id)
        if self.settings.handler_for(source.task_type).kind is not HandlerKind.IMPORT:
            raise InvalidTransition(f"task {task_id} is not an import", task_type=source.task_type)
        if source.status not in (TaskStatus.COMPLETED, TaskStatus.FAILED) or source.next_retry_at is not None:
            raise InvalidTransition(
                f"task {task_id} has not finished (status {source.status.value})", current=source.status.value
            )
        if source.counts.failed == 0 or "result" not in source.files:
            raise InvalidTransition(
                f"task {task_id} has no failed rows to retry", failed_records=source.counts.failed
            )
        params = {k: v for k, v in source.params.items() if k != "sourceTaskId"}
        params["sourceTaskId"] = str(source.id)
        if file_name is None:
            params.setdefault("format", (source.files.get("input") or {}).get("format") or "csv")
        return await self.create_task(
            principal,
            CreateTask(
                task_type=source.task_type,
                entity_type=source.entity_type,
                requested_by=source.requested_by,
                priority=source.priority,
                params=params,
                file_name=file_name,
                file_size=file_size,
                max_retries=source.max_retries,
            ),
        )

    async def get_task(self, principal: Principal, task_id: uuid.UUID) -> Task:
        """One task, through the Redis cache when there is one (never older than a committed write).

        Raises:
            TaskNotFound: no such task.
        """
        await self.limits.check(principal, "read")
        if self.cache is None:
            return await self._get(task_id)
        if (cached := await self.cache.get(task_id)) is not None:
            return cached
        found = await self.repository.get_versioned(task_id)
        if found is None:
            raise _not_found(task_id)
        task, version = found
        await self.cache.store(task, version)
        return task

    async def list_tasks(self, principal: Principal, query: TaskQuery) -> Page[Task]:
        """Tasks matching the filters, newest first."""
        await self.limits.check(principal, "read")
        return await self.repository.page(validate_query(query))

    async def cancel_task(self, principal: Principal, task_id: uuid.UUID, reason: str | None = None) -> Task:
        """Cancel a scheduled, pending or processing task through its workflow.

        ``reason`` (optional, free text) is recorded in the task's event and log line and passed to
        Temporal as the cancellation reason. Waits up to ``operations.cancel_wait`` seconds for the
        workflow's cleanup and returns the task as it then stands. A task whose run was never
        started gets it started first, so the cancellation is still recorded by its own workflow.

        Raises:
            TaskNotFound: no such task.
            InvalidTransition: the task is completed, failed or cancelled.
        """
        await self.limits.check(principal, "change")
        text = parse_cancel_reason(reason)
        task = await self._get(task_id)
        ensure_cancellable(task.status, retry_pending=task.next_retry_at is not None)
        by = f"requested by {principal.subject}"
        temporal_reason = f"{text} ({by})" if text else by
        wait = self.settings.cancel_wait
        if not await self.workflows.cancel(str(task_id), temporal_reason, wait):
            info = await self.workflows.describe(str(task_id))
            if info is None or info.running:
                # Created but its run not started yet (or it just started): start or join it.
                await self.runs.ensure_started(task)
                cancelled = await self.workflows.cancel(str(task_id), temporal_reason, wait)
            else:
                # The run ended without recording it (terminated): record that first.
                await self.runs.record_closed_run(task, info)
                cancelled = False
            if not cancelled:
                current = await self._get(task_id)
                ensure_cancellable(current.status, retry_pending=current.next_retry_at is not None)
                raise InvalidTransition("the task's workflow run has ended; read the task again")
        return await self._get(task_id)

    async def retry_task(self, principal: Principal, task_id: uuid.UUID) -> Task:
        """Start the next attempt of a failed task that has retries left.

        A new run of the task's workflow records the retry itself; one that waits to retry the task
        automatically is asked to retry now instead. Answers once the task is pending again (or
        after ``operations.cancel_wait`` seconds with the task as it then stands).

        Raises:
            TaskNotFound: no such task.
            InvalidTransition: the task is not failed (or changed meanwhile).
            RetryLimitExceeded: ``retryCount`` reached ``maxRetries``.
        """
        await self.limits.check(principal, "change")
        task = await self._get(task_id)
        ensure_retryable(task.status, task.retry_count, task.max_retries)
        if task.next_retry_at is not None:
            return with_snapshot(task, await self.workflows.retry_now(str(task_id)))
        message = f"requested by {principal.subject}"
        inp = workflow_input(task, self.settings, retry_message=message)
        try:
            await self.workflows.start(inp, new_attempt=True)
        except InvalidTransition:
            # The failed attempt's run writes its failure first and closes a moment later: a retry
            # asked for in between waits for that close rather than being refused.
            if not await self._await_run_closed(task_id):
                raise
            await self.workflows.start(inp, new_attempt=True)
        return await self._await_change(task)

    async def _await_run_closed(self, task_id: uuid.UUID) -> bool:
        deadline = asyncio.get_running_loop().time() + self.settings.cancel_wait
        while asyncio.get_running_loop().time() < deadline:
            info = await self.workflows.describe(str(task_id))
            if info is None or not info.running:
                return True
            await asyncio.sleep(_RETRY_POLL_SECONDS * 5)
        return False

    async def _await_change(self, task: Task) -> Task:
        deadline = asyncio.get_running_loop().time() + self.settings.cancel_wait
        while True:
            current = await self._get(task.id)
            if current.seq != task.seq or asyncio.get_running_loop().time() > deadline:
                return current
            await asyncio.sleep(_RETRY_POLL_SECONDS)

    async def update_progress(self, principal: Principal, task_id: uuid.UUID, report: ProgressReport) -> Task:
        """Apply an external worker's progress report through the task's workflow.

        The report reaches the workflow as a Temporal Update whose validator rejects reports on
        finished tasks, negative counts and ``processed > total`` before they reach history. The
        answer shows the task as the workflow holds it after the report (exact counts), while the
        mirror catches up within ``operations.progress_interval``.

        Raises:
            TaskNotFound: no such task.
            ValidationFailed: the report is inconsistent.
            InvalidTransition: the task no longer accepts reports.
            RateLimited: too many reports of this task are in flight; retry after a second.
        """
        validate_report_shape(report)
        await self.limits.check(principal, "progress", str(task_id))
        task = await self._get(task_id)
        # Checked here too (the workflow's validator has the last word) so that a report on a
        # finished task is refused without a round trip to a run that may no longer exist. Not for
        # a failed task: a retry may have started its next run before the mirror shows it pending.
        if task.status is not TaskStatus.FAILED:
            ensure_accepts_reports(task.status)
        try:
            snapshot = await self.workflows.report_progress(str(task_id), report)
        except InvalidTransition:
            # Say why in the task's own terms when the mirror now shows it ("task is failed; ...").
            ensure_accepts_reports((await self._get(task_id)).status)
            raise
        return with_snapshot(task, snapshot)

    async def delete_task(self, principal: Principal, task_id: uuid.UUID) -> None:
        """Delete a finished or failed task with its logs and events.

        Raises:
            TaskNotFound: no such task.
            InvalidTransition: the task is pending, scheduled or processing, or waits for a retry.
        """
        await self.limits.check(principal, "change")
        task = await self._get(task_id)
        ensure_deletable(task.status, retry_pending=task.next_retry_at is not None)
        if not await self.repository.delete_closed(task_id):
            current = await self._get(task_id)
            ensure_deletable(current.status, retry_pending=current.next_retry_at is not None)
            raise InvalidTransition("the task changed while it was being deleted; read it again")
        if self.bulk is not None and task.files:
            try:
                await self.bulk.delete_files(task_id)
            except Exception:
                # The row is gone already; stray objects are found by prefix and are harmless.
                log.exception("task %s deleted, but not all of its stored files", task_id)

    async def task_logs(self, principal: Principal, task_id: uuid.UUID, page: PageRequest) -> Page[TaskLog]:
        """A page of the task's log lines, oldest first."""
        await self.limits.check(principal, "read")
        validate_paging(page.page, page.page_size, MAX_PAGE_SIZE)
        await self._get(task_id)
        return await self.repository.logs(task_id, page)

    async def task_events(
        self, principal: Principal, task_id: uuid.UUID, page: PageRequest
    ) -> Page[TaskEvent]:
        """A page of the task's events in sequence order."""
        await self.limits.check(principal, "read")
        validate_paging(page.page, page.page_size, MAX_PAGE_SIZE)
        await self._get(task_id)
        return await self.repository.events(task_id, page)

    async def download_url(
        self, principal: Principal, task_id: uuid.UUID, file: str = "output"
    ) -> DownloadUrl:
        """Where the task's output (or ``file``: its row-level ``result``, its ``input``) can be fetched.

        For files this service stored, a signed URL that expires.

        Raises:
            TaskNotFound: no such task.
            NotAvailable: the task has no such file (yet).
            ValidationFailed: ``file`` is not output, result or input.
        """
        await self.limits.check(principal, "read")
        task = await self._get(task_id)
        if self.bulk is not None and (file != "output" or task.files.get("output")):
            signed = self.bulk.download(task, file)
            ref = task.files.get(file) or {}
            return DownloadUrl(url=signed.url, file_name=ref.get("name"), expires_at=signed.expires_at)
        if file != "output":
            raise ValidationFailed(
                f"task {task_id} stores no files; only its output can be asked for", field="file"
            )
        if not task.output_file_url:
            raise NotAvailable(
                f"task {task_id} has no output file (status {task.status.value})", id=str(task_id)
            )
        return DownloadUrl(url=task.output_file_url, file_name=task.file_name)

    async def health(self) -> HealthReport:
        """Reachability of Postgres and Temporal (required) and the state of optional parts."""
        required = {"database": self.repository.ping, "temporal": self.workflows.ping}
        probes = {**required, **self.optional_probes}
        results = await asyncio.gather(*(_probe(p) for p in probes.values()))
        components = dict(zip(probes, results, strict=True))
        return HealthReport(
            healthy=all(components[name] == "up" for name in required),
            components=components,
            degraded=any(components[name] != "up" for name in self.optional_probes),
        )


def _source_task_id(params: Mapping[str, object]) -> uuid.UUID | None:
    value = params.get("sourceTaskId")
    if value is None:
        return None
    try:
        return uuid.UUID(str(value))
    except ValueError:
        raise ValidationFailed(
            "params.sourceTaskId must be a task id (UUID)", field="params.sourceTaskId"
        ) from None


class ProbeFailed(Exception):
    """A health probe's finding, shown as is (no exception type in front of it)."""


async def _probe(probe: Callable[[], Awaitable[None]]) -> str:
    try:
        await asyncio.wait_for(probe(), timeout=5)
    except ProbeFailed as err:
        return f"down: {err}"
    except Exception as err:
        return f"down: {type(err).__name__}: {err}"
    return "up"


def _not_found(task_id: uuid.UUID) -> TaskNotFound:
    return TaskNotFound(f"task {task_id} not found", id=str(task_id))
