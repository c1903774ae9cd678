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
from common_operations.db.audit_repository import AuditEntry, AuditLog, Executor, record
from common_operations.db.repository import TaskRepository
from common_operations.domain.authorization import (
    Action,
    Creation,
    authorize,
    authorize_create,
    hidden,
    is_mine,
    reportable_types,
    visibility,
)
from common_operations.domain.errors import (
    DomainError,
    IdempotencyKeyReused,
    InvalidTransition,
    NotAvailable,
    RateLimited,
    ServiceUnavailable,
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
from common_operations.domain.task_snapshot import task_snapshot
from common_operations.domain.workflow_types import HandlerKind
from common_operations.infra.metrics import tasks as task_metrics
from common_operations.infra.secrets import scrub
from common_operations.infra.task_cache import TaskCache
from common_operations.infra.telemetry import traced_use_cases
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


# A span per use case (tracing on): between the transport's server span and the Temporal calls.
@traced_use_cases
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

    def _reporters(self, task_type: str) -> list[str]:
        """The ``reporters`` list of ``task_type`` (none for a type no longer configured)."""
        settings = self.settings.task_types.get(task_type)
        return settings.reporters if settings is not None else []

    def _authorize(self, principal: Principal, action: Action, task: Task) -> None:
        authorize(principal, action, task, reporters=self._reporters(task.task_type))

    async def _authorized(self, principal: Principal, action: Action, task_id: uuid.UUID) -> Task:
        """The task, read first and then authorized: a hidden task is the same 404 as a missing one."""
        task = await self._get(task_id)
        self._authorize(principal, action, task)
        return task

    async def _audit_other(self, principal: Principal, action: str, task: Task, **metadata: object) -> None:
        """Record ``action`` on ``task`` when it is not the actor's own (after it succeeded).

        A failed write is logged, not raised: the action happened and its answer must say so.
        """
        if self.audit is None or is_mine(principal, task):
            return
        entry = AuditEntry(
            action=action,
            entity_type="task",
            entity_id=str(task.id),
            old_state={"status": task.status.value},
            metadata={"owner": task.requested_by, "createdBy": task.created_by, **metadata},
        )
        try:
            await self.audit.record(principal, entry)
        except Exception:
            log.exception(
                "task %s: %s by %s done, but its audit row was not written",
                task.id,
                action,
                principal.subject,
            )

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

        Who may create what, and for whom, is :func:`~common_operations.domain.authorization.
        authorize_create`'s: the task's ``createdBy`` is always the caller.

        Raises:
            PermissionDenied: the caller may not create this task (or not for that requestedBy).
            IdempotencyKeyReused: the caller used the key before with a different request.
        """
        await self.limits.check(principal, "create")
        return await self._create(principal, cmd)

    async def _create(
        self, principal: Principal, cmd: CreateTask, *, creation: Creation | None = None
    ) -> CreatedTask:
        """:meth:`create` after the rate limit; ``creation`` when the caller was authorized already."""
        max_retries = self.settings.default_max_retries if cmd.max_retries is None else cmd.max_retries
        cmd = validate_create(
            replace(cmd, requested_by=cmd.requested_by or principal.subject, max_retries=max_retries)
        )
        handler = self.settings.handler_for(cmd.task_type)
        # After validation (requestedBy is trimmed there), before the owner's unfinished tasks are
        # counted: a caller may not learn anything about another owner's tasks.
        admin_only = handler.kind is HandlerKind.RETENTION
        creation = creation or authorize_create(principal, cmd.requested_by, admin_only=admin_only)
        await self.limits.check_unfinished(principal, cmd.requested_by or principal.subject)
        if cmd.callback_url is not None:
            # Before anything is written: a refused URL (SSRF rules) means no task at all.
            await check_callback_url(cmd.callback_url, self.webhooks)
        key = None if cmd.idempotency_key is None else validate_key(cmd.idempotency_key)
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
            created_by=creation.created_by,
        )
        when = f" scheduled for {cmd.scheduled_at.isoformat()}" if scheduled and cmd.scheduled_at else ""
        behalf = f" on behalf of {creation.requested_by}" if creation.on_behalf else ""
        message = f"task created by {principal.subject}{behalf}{when}"
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
        task_metrics.task_created(task.task_type)
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
            TaskNotFound: no such task, or one the caller may not see.
            PermissionDenied: the caller may see the task but not retry its rows.
            InvalidTransition: the task is not a finished import, or has no failed rows.
        """
        await self.limits.check(principal, "change")
        source = await self._authorized(principal, Action.RETRY_FAILED_ROWS, task_id)
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
        await self.limits.check(principal, "create")
        # The new task belongs to the source's requester whoever asks (an operator retrying a
        # user's import acts for that user): the retry was authorized above, not as a create.
        cmd = CreateTask(
            task_type=source.task_type,
            entity_type=source.entity_type,
            requested_by=source.requested_by,
            priority=source.priority,
            params=params,
            file_name=file_name,
            file_size=file_size,
            max_retries=source.max_retries,
        )
        creation = Creation(requested_by=source.requested_by, created_by=principal.subject)
        return (await self._create(principal, cmd, creation=creation)).task

    async def get_task(self, principal: Principal, task_id: uuid.UUID) -> Task:
        """One task, through the Redis cache when there is one (never older than a committed write).

        Raises:
            TaskNotFound: no such task, or one the caller may not see.
        """
        await self.limits.check(principal, "read")
        if self.cache is None:
            return await self._authorized(principal, Action.READ, task_id)
        if (cached := await self.cache.get(task_id)) is not None:
            self._authorize(principal, Action.READ, cached)
            return cached
        found = await self.repository.get_versioned(task_id)
        if found is None:
            raise _not_found(task_id)
        task, version = found
        # Cached before the check: the entry is the task's, not the caller's view of it.
        await self.cache.store(task, version)
        self._authorize(principal, Action.READ, task)
        return task

    async def list_tasks(self, principal: Principal, query: TaskQuery) -> Page[Task]:
        """Tasks matching the filters that the caller may see, newest first.

        Admins and operators see every task; anyone else only its own (and a service those of the
        types it reports on). A filter naming someone else's tasks gives an empty page.
        """
        await self.limits.check(principal, "read")
        reporters = {name: t.reporters for name, t in self.settings.task_types.items()}
        scope = visibility(principal, reportable_types(principal, reporters))
        return await self.repository.page(validate_query(query), scope)

    async def cancel_task(self, principal: Principal, task_id: uuid.UUID, reason: str | None = None) -> Task:
        """Cancel a scheduled, pending or processing task through its workflow.

        ``reason`` (optional, free text) is recorded in the task's event and log line and passed to
        Temporal as the cancellation reason. Waits up to ``operations.cancel_wait`` seconds for the
        workflow's cleanup and returns the task as it then stands. A task whose run was never
        started gets it started first, so the cancellation is still recorded by its own workflow.

        A cancellation of someone else's task is recorded in the audit log.

        Raises:
            TaskNotFound: no such task, or one the caller may not see.
            PermissionDenied: the caller may see the task but not cancel it.
            InvalidTransition: the task is completed, failed or cancelled.
        """
        await self.limits.check(principal, "change")
        text = parse_cancel_reason(reason)
        task = await self._authorized(principal, Action.CANCEL, task_id)
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
        await self._audit_other(principal, "task.cancel", task, reason=text)
        task_metrics.task_cancelled(task.task_type)
        return await self._get(task_id)

    async def retry_task(self, principal: Principal, task_id: uuid.UUID) -> Task:
        """Start the next attempt of a failed task that has retries left.

        A new run of the task's workflow records the retry itself; one that waits to retry the task
        automatically is asked to retry now instead. Answers once the task is pending again (or
        after ``operations.cancel_wait`` seconds with the task as it then stands).

        A retry of someone else's task is recorded in the audit log.

        Raises:
            TaskNotFound: no such task, or one the caller may not see.
            PermissionDenied: the caller may see the task but not retry it.
            InvalidTransition: the task is not failed (or changed meanwhile).
            RetryLimitExceeded: ``retryCount`` reached ``maxRetries``.
        """
        await self.limits.check(principal, "change")
        task = await self._authorized(principal, Action.RETRY, task_id)
        ensure_retryable(task.status, task.retry_count, task.max_retries)
        if task.next_retry_at is not None:
            retried = with_snapshot(task, await self.workflows.retry_now(str(task_id)))
            await self._audit_other(principal, "task.retry", task)
            return retried
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
        await self._audit_other(principal, "task.retry", task)
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

        Only admins and the ``service`` principals the task type's ``reporters`` name may report:
        an end user can never complete a task with a report.

        Raises:
            TaskNotFound: no such task, or one the caller may not see.
            PermissionDenied: the caller is not a reporter of the task's type.
            ValidationFailed: the report is inconsistent.
            InvalidTransition: the task no longer accepts reports.
            RateLimited: too many reports of this task are in flight; retry after a second.
        """
        task: Task | None = None
        try:
            validate_report_shape(report)
            await self.limits.check(principal, "progress", str(task_id))
            task = await self._authorized(principal, Action.REPORT_PROGRESS, task_id)
            # Checked here too (the workflow's validator has the last word) so that a report on a
            # finished task is refused without a round trip to a run that may no longer exist. Not
            # for a failed task: a retry may have started its next run before the mirror shows it
            # pending.
            if task.status is not TaskStatus.FAILED:
                ensure_accepts_reports(task.status)
            try:
                snapshot = await self.workflows.report_progress(str(task_id), report)
            except InvalidTransition:
                # Say why in the task's own terms when the mirror now shows it ("task is failed; ...").
                ensure_accepts_reports((await self._get(task_id)).status)
                raise
        except DomainError as err:
            # Counted by kind (the error code) and type: a rejected report is a reporter's bug or a
            # late report, and alerts tell them apart.
            task_metrics.report_rejected(task.task_type if task is not None else None, err.code)
            raise
        task_metrics.report_accepted(task.task_type)
        return with_snapshot(task, snapshot)

    async def delete_task(self, principal: Principal, task_id: uuid.UUID, *, audited: bool = True) -> None:
        """Delete a finished or failed task with its logs and events.

        The audit row (``task.delete``, the task's REST snapshot as the old state) is written in the
        delete's own transaction: there is no deleted task without its record, nor a record of a
        delete that did not happen.

        Args:
            principal: the caller.
            task_id: the task.
            audited: False only for the retention job, which records one row per batch itself
                (copying each expired task into the never-deleted audit log would defeat retention).

        Raises:
            TaskNotFound: no such task, or one the caller may not see.
            PermissionDenied: the caller may see the task but not delete it.
            InvalidTransition: the task is pending, scheduled or processing, or waits for a retry.
        """
        await self.limits.check(principal, "change")
        task = await self._authorized(principal, Action.DELETE, task_id)
        ensure_deletable(task.status, retry_pending=task.next_retry_at is not None)
        audit = self._delete_audit(principal, task) if audited and self.audit is not None else None
        if not await self.repository.delete_closed(task_id, audit=audit):
            current = await self._get(task_id)
            ensure_deletable(current.status, retry_pending=current.next_retry_at is not None)
            raise InvalidTransition("the task changed while it was being deleted; read it again")
        if self.bulk is not None and task.files:
            try:
                await self.bulk.delete_files(task_id)
            except Exception:
                # The row is gone already; stray objects are found by prefix and are harmless.
                log.exception("task %s deleted, but not all of its stored files", task_id)

    @staticmethod
    def _delete_audit(principal: Principal, task: Task) -> Callable[[Executor], Awaitable[None]]:
        """The ``task.delete`` audit row, written by the repository inside the delete's transaction."""
        entry = AuditEntry(
            action="task.delete",
            entity_type="task",
            entity_id=str(task.id),
            old_state=task_snapshot(task),
            metadata={"owner": task.requested_by, "createdBy": task.created_by},
        )

        async def write(executor: Executor) -> None:
            await record(executor, principal, entry)

        return write

    async def task_logs(self, principal: Principal, task_id: uuid.UUID, page: PageRequest) -> Page[TaskLog]:
        """A page of the task's log lines, oldest first."""
        await self.limits.check(principal, "read")
        validate_paging(page.page, page.page_size, MAX_PAGE_SIZE)
        await self._authorized(principal, Action.READ, task_id)
        return await self.repository.logs(task_id, page)

    async def task_events(
        self, principal: Principal, task_id: uuid.UUID, page: PageRequest
    ) -> Page[TaskEvent]:
        """A page of the task's events in sequence order."""
        await self.limits.check(principal, "read")
        validate_paging(page.page, page.page_size, MAX_PAGE_SIZE)
        await self._authorized(principal, Action.READ, task_id)
        return await self.repository.events(task_id, page)

    async def download_url(
        self, principal: Principal, task_id: uuid.UUID, file: str = "output"
    ) -> DownloadUrl:
        """Where the task's output (or ``file``: its row-level ``result``, its ``input``) can be fetched.

        For files this service stored, a signed URL that expires.

        Raises:
            TaskNotFound: no such task, or one the caller may not see.
            NotAvailable: the task has no such file (yet).
            ValidationFailed: ``file`` is not output, result or input.
        """
        await self.limits.check(principal, "read")
        task = await self._authorized(principal, Action.READ, task_id)
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
    # The component states are shown to callers (/health/detailed, gRPC Health): a library's
    # exception text names hosts, ports and sometimes DSNs, so it is logged here and the answer says
    # only what kind of failure it was. Our own findings are shown, without any address they quote.
    try:
        await asyncio.wait_for(probe(), timeout=5)
    except (ProbeFailed, DomainError) as err:
        return f"down: {scrub(str(err))}"
    except TimeoutError:
        log.warning("health probe %s: no answer within 5 s", _probe_name(probe))
        return "down: no answer within 5 s"
    except Exception as err:
        log.warning("health probe %s failed: %s: %s", _probe_name(probe), type(err).__name__, err)
        reason = "unreachable" if isinstance(err, OSError) else "error"
        return f"down: {reason} ({type(err).__name__})"
    return "up"


def _probe_name(probe: Callable[[], Awaitable[None]]) -> str:
    return str(
        getattr(probe, "__qualname__", None) or getattr(getattr(probe, "func", None), "__qualname__", "?")
    )


# A missing task and a hidden one get the very same error (no existence leak).
_not_found = hidden
