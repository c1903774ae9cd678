"""``TaskWorkflow``: one run chain per task attempt, the single writer of a task's state.

Every change of state gets the next sequence number and is mirrored to Postgres by a local activity
(no server round trip). The run chain owns the task row: its first write takes the row over with a
compare-and-set on the sequence, and every later write is fenced by the chain's owner token, so no
other writer's change can land in between (``db.repository``).

Progress reports arrive as the ``report_progress`` Update. A report that changes the status is
mirrored before the Update answers; a plain progress report only changes memory, and the main loop
mirrors the latest counts at most once per ``progress_interval`` (the ``progress`` query is always
exact). A run continues as new when Temporal suggests it or after ``max_reports_per_run`` reports,
carrying its whole state, so a task may take any number of reports for as long as it runs.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

from temporalio import workflow
from temporalio.common import (
    RetryPolicy,
    SearchAttributeKey,
    SearchAttributePair,
    SearchAttributeUpdate,
    TypedSearchAttributes,
)
from temporalio.exceptions import (
    ActivityError,
    ApplicationError,
    WorkflowAlreadyStartedError,
    is_cancelled_exception,
)

with workflow.unsafe.imports_passed_through():
    from common_operations.domain.errors import (
        DomainError,
        InvalidTransition,
        ReportLimitReached,
        ValidationFailed,
    )
    from common_operations.domain.status import TaskStatus, ensure_accepts_reports, ensure_transition
    from common_operations.domain.task import ProgressReport, RecordCounts, apply_report
    from common_operations.domain.webhooks import WEBHOOK_EVENTS, WEBHOOK_WORKFLOW_TYPE, WebhookDelivery
    from common_operations.domain.workflow_details import current_details
    from common_operations.domain.workflow_types import (
        AWAIT_UPLOAD_ACTIVITY,
        BULK_ACTION_ACTIVITY,
        BULK_INPUT_ERROR,
        BULK_TOO_MANY_ERRORS,
        EXPORT_ACTIVITY,
        IMPORT_ACTIVITY,
        MIRROR_ACTIVITY,
        PROGRESS_QUERY,
        REPORT_PROGRESS_UPDATE,
        RETENTION_ACTIVITY,
        RETRY_NOW_UPDATE,
        SA_ENTITY_TYPE,
        SA_PROGRESS,
        SA_REQUESTED_BY,
        SA_TASK_STATUS,
        SA_TASK_TYPE,
        SUPERSEDED_ERROR,
        TASK_FAILED_ERROR,
        WORKFLOW_TYPE,
        AwaitUploadInput,
        BulkJobInput,
        BulkJobResult,
        DelegatedTaskInput,
        DelegatedTaskResult,
        HandlerKind,
        HandlerSpec,
        LogLine,
        MirrorOutcome,
        MirrorWrite,
        ProgressSnapshot,
        RetentionInput,
        TaskWorkflowInput,
    )

TASK_TYPE_KEY = SearchAttributeKey.for_keyword(SA_TASK_TYPE)
ENTITY_TYPE_KEY = SearchAttributeKey.for_keyword(SA_ENTITY_TYPE)
TASK_STATUS_KEY = SearchAttributeKey.for_keyword(SA_TASK_STATUS)
REQUESTED_BY_KEY = SearchAttributeKey.for_keyword(SA_REQUESTED_BY)
PROGRESS_KEY = SearchAttributeKey.for_int(SA_PROGRESS)
# What a Temporal server must have registered (dev servers take it as start-up flags).
SEARCH_ATTRIBUTE_KEYS: list[SearchAttributeKey[Any]] = [
    TASK_TYPE_KEY,
    ENTITY_TYPE_KEY,
    TASK_STATUS_KEY,
    REQUESTED_BY_KEY,
    PROGRESS_KEY,
]

# Postgres may be down for a while: keep retrying the mirror rather than lose a state change.
MIRROR_RETRY = RetryPolicy(
    initial_interval=timedelta(milliseconds=200),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(seconds=10),
)
MIRROR_TIMEOUT = timedelta(seconds=10)
# Runs recorded before webhooks existed replay without starting one.
WEBHOOK_PATCH = "webhook-on-final"


def search_attribute_pairs(
    inp: TaskWorkflowInput, status: TaskStatus, progress: float
) -> list[SearchAttributePair[Any]]:
    """The search attributes of a task (DESIGN.md §5), also used when starting the workflow."""
    return [
        SearchAttributePair(TASK_TYPE_KEY, inp.task_type),
        SearchAttributePair(ENTITY_TYPE_KEY, inp.entity_type),
        SearchAttributePair(TASK_STATUS_KEY, status.value),
        SearchAttributePair(REQUESTED_BY_KEY, inp.requested_by),
        SearchAttributePair(PROGRESS_KEY, int(progress)),
    ]


def _rejection(err: DomainError) -> ApplicationError:
    """A domain error as an ApplicationError whose ``type`` is the stable code."""
    return ApplicationError(err.message, err.details, type=err.code, non_retryable=True)


def _retry_policy(spec: HandlerSpec, non_retryable: list[str] | None = None) -> RetryPolicy:
    """The task type's retry policy for its activity (exponential backoff)."""
    return RetryPolicy(
        initial_interval=timedelta(seconds=spec.retry.initial_interval_seconds),
        backoff_coefficient=spec.retry.backoff_coefficient,
        maximum_interval=timedelta(seconds=spec.retry.maximum_interval_seconds),
        maximum_attempts=spec.retry.maximum_attempts,
        non_retryable_error_types=non_retryable or None,
    )


def _describe_failure(err: BaseException) -> str:
    cause = err.cause if isinstance(err, ActivityError) and err.cause else err
    return str(cause) or type(cause).__name__


@workflow.defn(name=WORKFLOW_TYPE)
class TaskWorkflow:
    """Runs the attempts of a task and mirrors every state change."""

    @workflow.init
    def __init__(self, inp: TaskWorkflowInput) -> None:
        """Restore the state handed over by the service or by the previous run of the chain."""
        self._inp = inp
        self._s = inp.state
        self._status = TaskStatus(self._s.status)
        self._counts = RecordCounts(
            total=self._s.total_records,
            processed=self._s.processed_records,
            success=self._s.success_records,
            failed=self._s.failed_records,
        )
        # A chain is owned by its first run; continue-as-new carries the token on.
        self._owner = self._s.owner or workflow.info().run_id
        self._recent: deque[str] = deque(
            self._s.recent_report_ids, maxlen=max(1, inp.limits.remembered_report_ids)
        )
        self._recent_set = set(self._recent)
        self._lock = asyncio.Lock()
        self._reports_this_run = 0
        self._last_flush: datetime | None = None
        self._retry_now = False
        self._fenced: str | None = None
        self._sa_status = self._status
        self._sa_progress = int(self._counts.percentage)
        # What a stopped bulk job said it left behind (recorded with the cancellation).
        self._stop_note = ""
        # A run started to retry a failed task is pending from the caller's point of view as soon
        # as RetryTask answered, though its first task has yet to record the retry: a report that
        # arrives first waits for that instead of being refused as "task is failed".
        self._retry_pending = inp.retry_message is not None
        self._show_details()

    @workflow.run
    async def run(self, inp: TaskWorkflowInput) -> ProgressSnapshot:
        """Wait for the schedule, hand the work to its handler, retry if configured, record it all."""
        try:
            await self._run_attempts()
        except BaseException as err:
            if not is_cancelled_exception(err):
                raise
            if await self._finish_cancelled():
                await workflow.wait_condition(workflow.all_handlers_finished)
                raise
        await workflow.wait_condition(workflow.all_handlers_finished)
        if self._fenced:
            raise ApplicationError(self._fenced, type=SUPERSEDED_ERROR, non_retryable=True)
        if self._status is TaskStatus.FAILED:
            raise ApplicationError(
                self._s.error_message or "task failed", type=TASK_FAILED_ERROR, non_retryable=True
            )
        return self.progress()

    async def _run_attempts(self) -> None:
        if self._inp.retry_message is not None:
            async with self._lock:
                await self._begin_retry(self._inp.retry_message, automatic=False)
        if self._status is TaskStatus.SCHEDULED:
            await self._wait_for_schedule()
        while not self._fenced:
            if self._s.attempt_deadline is None:
                self._start_attempt_clock()
            if self._inp.handler.kind is HandlerKind.DELEGATED:
                await self._run_delegated()
            elif self._inp.handler.kind.is_bulk:
                await self._run_bulk()
            elif self._inp.handler.kind is HandlerKind.RETENTION:
                await self._run_retention()
            elif self._inp.handler.kind is HandlerKind.BULK_ACTION:
                await self._run_bulk_action()
            else:
                await self._await_external()
            if self._status is not TaskStatus.FAILED or self._s.next_retry_at is None or self._fenced:
                return
            await self._await_automatic_retry()

    # -- queries and updates ---------------------------------------------------------------

    @workflow.query(name=PROGRESS_QUERY)
    def progress(self) -> ProgressSnapshot:
        """Live status, counts and percentage."""
        return ProgressSnapshot(
            task_id=self._inp.task_id,
            status=self._status.value,
            total_records=self._counts.total,
            processed_records=self._counts.processed,
            success_records=self._counts.success,
            failed_records=self._counts.failed,
            progress_percentage=self._counts.percentage,
            seq=self._s.seq,
            error_message=self._s.error_message,
            retry_count=self._s.retry_count,
            started_at=self._s.started_at,
            completed_at=self._s.completed_at,
            next_retry_at=self._s.next_retry_at,
            reports=self._s.reports,
            runs=self._s.runs,
        )

    @workflow.update(name=REPORT_PROGRESS_UPDATE)
    async def report_progress(self, report: ProgressReport) -> ProgressSnapshot:
        """Apply a worker's progress report; the first one starts the task, ``is_completed`` ends it.

        A report whose id this chain has applied before (a retry that reached a later run) is
        answered with the current state and not applied again.
        """
        report_id = self._update_id()
        if report_id in self._recent_set:
            return self.progress()
        await workflow.wait_condition(self._settled)
        async with self._lock:
            try:
                self._check_report(report)
                counts = apply_report(self._counts, report)
            except DomainError as err:
                # State may have moved between validation and now (e.g. two completions at once).
                raise _rejection(err) from err
            self._remember(report_id)
            self._counts = counts
            self._s.reports += 1
            self._reports_this_run += 1
            self._s.last_report_at = workflow.now()
            note = report.message or self._counts_note()
            started = self._status is TaskStatus.PENDING
            if started:
                await self._transition(TaskStatus.PROCESSING, "task.started", f"worker started: {note}")
            if report.is_completed:
                if report.error_message:
                    await self._fail(f"worker failed: {report.error_message}", report.error_message)
                else:
                    await self._transition(TaskStatus.COMPLETED, "task.completed", f"completed: {note}")
            elif not started:
                self._mark_dirty(note, log=report.message)
        return self.progress()

    @report_progress.validator
    def _validate_report(self, report: ProgressReport) -> None:
        if self._update_id() in self._recent_set:
            return
        try:
            self._check_report(report)
            if not self._retry_pending:
                # A retry's counts start again from zero once it is recorded: the handler checks
                # the report against those, under the lock.
                apply_report(self._counts, report)
        except DomainError as err:
            raise _rejection(err) from err

    @workflow.update(name=RETRY_NOW_UPDATE)
    async def retry_now(self) -> ProgressSnapshot:
        """Skip the rest of an automatic retry's backoff: retry the failed task now.

        Answers once the task is pending again (or was cancelled meanwhile).
        """
        self._retry_now = True
        await workflow.wait_condition(lambda: self._status is not TaskStatus.FAILED or bool(self._fenced))
        return self.progress()

    @retry_now.validator
    def _validate_retry_now(self) -> None:
        if self._status is not TaskStatus.FAILED or self._s.next_retry_at is None:
            raise _rejection(InvalidTransition("no automatic retry is waiting", current=self._status.value))

    def _update_id(self) -> str:
        info = workflow.current_update_info()
        return info.id if info is not None else ""

    def _remember(self, report_id: str) -> None:
        if not report_id:
            return
        if len(self._recent) == self._recent.maxlen:
            self._recent_set.discard(self._recent[0])
        self._recent.append(report_id)
        self._recent_set.add(report_id)

    def _status_for_reports(self) -> TaskStatus:
        """The status a report is judged by: pending where the caller already sees it pending.

        A retry's run is pending once RetryTask answered, and a scheduled task once its time has
        come, though the run may not have recorded either yet: its worker may have died after the
        mirror write, and the report then arrives in the same activation as the timer or the start.
        """
        if self._retry_pending:
            return TaskStatus.PENDING
        due = self._inp.scheduled_at
        if self._status is TaskStatus.SCHEDULED and due is not None and workflow.now() >= due:
            return TaskStatus.PENDING
        return self._status

    def _settled(self) -> bool:
        """Whether a report may be applied now: the retry or the schedule has been recorded."""
        if self._fenced or self._status in (TaskStatus.CANCELLED, TaskStatus.COMPLETED):
            return True
        return not self._retry_pending and self._status is not TaskStatus.SCHEDULED

    def _check_report(self, report: ProgressReport) -> None:
        if self._fenced:
            raise InvalidTransition("this run no longer owns the task")
        ensure_accepts_reports(self._status_for_reports())
        if self._inp.handler.kind.is_bulk or self._inp.handler.kind in (
            HandlerKind.RETENTION,
            HandlerKind.BULK_ACTION,
        ):
            raise InvalidTransition(
                f"a built-in {self._inp.handler.kind.value} task reports its own progress; "
                "UpdateTaskProgress is not accepted for it"
            )
        if self._inp.handler.kind is HandlerKind.DELEGATED:
            if self._status is not TaskStatus.PROCESSING:
                raise InvalidTransition("the delegated activity has not started yet")
            if report.is_completed:
                raise ValidationFailed(
                    "a delegated task completes when its activity returns; isCompleted is not "
                    "accepted for it",
                    field="isCompleted",
                )
            if self._reports_this_run >= self._inp.limits.max_reports_per_run:
                # Temporal caps the Updates of one run, and a run cannot continue as new while its
                # activity works: the activity's result carries its final counts instead.
                raise ReportLimitReached(
                    f"this attempt of the delegated task took {self._reports_this_run} progress reports, "
                    "the most one attempt accepts; return the final counts in the activity's result",
                    limit=self._inp.limits.max_reports_per_run,
                )

    # -- handlers --------------------------------------------------------------------------

    def _start_attempt_clock(self) -> None:
        now = workflow.now()
        self._s.attempt_deadline = now + timedelta(seconds=self._inp.task_timeout_seconds)
        self._s.last_report_at = self._s.last_report_at or now

    async def _wait_for_schedule(self) -> None:
        if self._inp.scheduled_at is not None:
            delay = self._inp.scheduled_at - workflow.now()
            if delay > timedelta(0):
                await workflow.sleep(delay)
        async with self._lock:
            await self._transition(TaskStatus.PENDING, "task.pending", "scheduled time reached")

    async def _await_external(self) -> None:
        """Wait for reports; fail the task when the worker stays silent or the attempt takes too long."""
        silence = timedelta(seconds=self._inp.handler.heartbeat_timeout_seconds)
        while not self._status.is_closed and not self._fenced:
            if self._should_continue_as_new():
                await self._continue_as_new()
            deadline = self._s.attempt_deadline or workflow.now()
            silent_at = (self._s.last_report_at or workflow.now()) + silence
            await self._idle(until=lambda: self._should_continue_as_new(), wake_at=min(deadline, silent_at))
            now = workflow.now()
            if self._status.is_closed or self._fenced or self._should_continue_as_new():
                continue
            if now >= deadline:
                await self._fail_locked(f"task exceeded its timeout of {self._inp.task_timeout_seconds:g}s")
            elif now >= (self._s.last_report_at or now) + silence:
                await self._fail_locked(
                    f"no progress report from the external worker within {silence.total_seconds():g}s "
                    f"(heartbeat timeout of task type {self._inp.task_type!r})"
                )

    async def _idle(self, *, until: Callable[[], bool], wake_at: datetime | None) -> None:
        """Wait until ``until()``, the task closes or ``wake_at``, mirroring coalesced progress.

        Reports only mark the state dirty; the mirror is written at most once per
        ``progress_interval``, with the latest counts. No timer is started per report.
        """
        interval = timedelta(seconds=self._inp.limits.progress_interval_seconds)

        def stop() -> bool:
            return self._status.is_closed or bool(self._fenced) or until()

        while not stop():
            now = workflow.now()
            if wake_at is not None and now >= wake_at:
                return
            flush_at = (self._last_flush + interval) if self._last_flush is not None else now
            if self._s.dirty and flush_at <= now:
                async with self._lock:
                    if self._s.dirty and not self._status.is_closed:
                        note = self._s.last_message or self._counts_note()
                        await self._write("task.progress", note, log_message=False)
                continue
            targets = [t for t in (wake_at, flush_at if self._s.dirty else None) if t is not None]
            timeout = (min(targets) - now).total_seconds() if targets else None
            dirty_now = self._s.dirty

            def changed(dirty_now: bool = dirty_now) -> bool:
                # Wake for the first report after a write (to arm the flush timer), not for each.
                return stop() or (self._s.dirty and not dirty_now)

            with contextlib.suppress(TimeoutError):
                await workflow.wait_condition(changed, timeout=timeout)

    async def _run_delegated(self) -> None:
        spec = self._inp.handler
        if spec.activity is None or spec.task_queue is None:  # rejected when the configuration loads
            await self._fail_locked(f"task type {self._inp.task_type!r} names no activity and task queue")
            return
        async with self._lock:
            await self._transition(
                TaskStatus.PROCESSING,
                "task.started",
                f"delegated to activity {spec.activity} on task queue {spec.task_queue}",
            )
        deadline = self._s.attempt_deadline or workflow.now()
        timeout = max(timedelta(seconds=1), deadline - workflow.now())
        handle = workflow.start_activity(
            spec.activity,
            DelegatedTaskInput(
                task_id=self._inp.task_id,
                task_type=self._inp.task_type,
                entity_type=self._inp.entity_type,
                requested_by=self._inp.requested_by,
                params=self._inp.params,
                attempt_of_task=self._s.retry_count,
            ),
            task_queue=spec.task_queue,
            schedule_to_close_timeout=timeout,
            start_to_close_timeout=timeout,
            heartbeat_timeout=timedelta(seconds=spec.heartbeat_timeout_seconds),
            retry_policy=_retry_policy(spec),
            cancellation_type=workflow.ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
            result_type=DelegatedTaskResult,
        )
        try:
            # The activity's own progress reports are mirrored (coalesced) while it works.
            await self._idle(until=handle.done, wake_at=None)
            if self._fenced:
                handle.cancel()
                return
            result = await handle
        except asyncio.CancelledError:
            # The workflow is being cancelled while we waited beside the activity: cancel it and
            # wait for it to acknowledge, as WAIT_CANCELLATION_COMPLETED promises.
            if not handle.done():
                handle.cancel()
                # Cancelled, or failed or timed out before it acknowledged: either way it works no
                # more, and the task ends cancelled as asked (not as a run failed unrecorded).
                with contextlib.suppress(ActivityError):
                    await handle
            raise
        except ActivityError as err:
            if is_cancelled_exception(err):
                raise
            await self._fail_locked(f"activity {spec.activity} failed: {_describe_failure(err)}")
            return
        async with self._lock:
            if self._status.is_closed:
                return
            self._apply_result(result)
            await self._transition(
                TaskStatus.COMPLETED, "task.completed", (result and result.message) or "activity completed"
            )

    async def _run_bulk(self) -> None:
        """Wait for the input file (imports), then let this service's bulk activity do the job.

        The activity mirrors its own progress, fenced by this run's owner token and the sequence of
        the ``processing`` write; every transition after it (completed, failed, cancelled) is
        written here with the counts the activity returned.
        """
        kind = self._inp.handler.kind
        if self._inp.input_file is not None and not self._s.input_ready and not await self._await_upload():
            return
        what = f"{kind.value} of {self._inp.entity_type}"
        name = (self._inp.input_file or {}).get("name")
        async with self._lock:
            await self._transition(
                TaskStatus.PROCESSING, "task.started", f"{what} started" + (f": {name}" if name else "")
            )
        await self._run_job(
            IMPORT_ACTIVITY if kind is HandlerKind.IMPORT else EXPORT_ACTIVITY,
            BulkJobInput(
                task_id=self._inp.task_id,
                entity_type=self._inp.entity_type,
                attempt=self._s.retry_count,
                owner=self._owner,
                seq=self._s.seq,
                params=self._inp.params,
                input_file=self._inp.input_file,
                progress_interval_seconds=self._inp.limits.progress_interval_seconds,
            ),
            what,
            non_retryable=[BULK_INPUT_ERROR, BULK_TOO_MANY_ERRORS],
        )

    async def _run_job(self, activity: str, arg: Any, what: str, *, non_retryable: list[str]) -> None:
        """Run one built-in job's activity to its end and record how it ended.

        Completed with the counts it returned; failed with its error (and the counts and files a
        failed bulk job reports); cancelled with what the job says it left behind: a cancellation
        passed on to the activity makes it stop and answer with what it committed.
        """
        spec = self._inp.handler
        deadline = self._s.attempt_deadline or workflow.now()
        handle = workflow.start_activity(
            activity,
            arg,
            start_to_close_timeout=max(timedelta(seconds=1), deadline - workflow.now()),
            heartbeat_timeout=timedelta(seconds=spec.heartbeat_timeout_seconds),
            retry_policy=_retry_policy(spec, non_retryable),
            cancellation_type=workflow.ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
            result_type=BulkJobResult,
        )
        try:
            result = await handle
        except asyncio.CancelledError:
            if not handle.done():
                handle.cancel()
            with contextlib.suppress(ActivityError, asyncio.CancelledError):
                stopped = await handle
                self._apply_bulk(stopped)
                self._stop_note = stopped.message
            raise
        except ActivityError as err:
            if is_cancelled_exception(err):
                raise
            self._apply_failed_bulk(err)
            await self._fail_locked(f"{what} failed: {_describe_failure(err)}")
            return
        if result.stopped:
            # Awaiting the activity passed the workflow's cancellation on to it, and the job
            # answered with what it committed instead of raising: record a cancel that says so.
            self._apply_bulk(result)
            self._stop_note = result.message
            raise asyncio.CancelledError(result.message)
        async with self._lock:
            if self._status.is_closed:
                return
            self._apply_bulk(result)
            await self._transition(
                TaskStatus.COMPLETED, "task.completed", result.message or f"{what} completed"
            )

    async def _run_retention(self) -> None:
        """Delete final tasks older than ``olderThanDays`` (and their files) in one activity.

        Modelled on :meth:`_run_bulk`: the transitions are written here, the activity only deletes
        and returns its counts (deleted tasks as total and processed).
        """
        raw = self._inp.params.get("olderThanDays")
        days = raw if isinstance(raw, int | float) and not isinstance(raw, bool) else None
        if raw is not None and (days is None or days <= 0):
            # Refused before anything is deleted: a mistyped age must never mean "everything".
            await self._fail_locked(f"olderThanDays must be a positive number of days, not {raw!r}")
            return
        async with self._lock:
            await self._transition(TaskStatus.PROCESSING, "task.started", "retention started")
        await self._run_job(
            RETENTION_ACTIVITY,
            RetentionInput(task_id=self._inp.task_id, days=None if days is None else float(days)),
            "retention",
            non_retryable=[],
        )

    async def _run_bulk_action(self) -> None:
        """Cancel or retry every task matching the filter in ``params``, in one activity.

        Modelled on :meth:`_run_bulk`: the activity mirrors its own progress (fenced by this run's
        owner token and the ``processing`` write's sequence), the transitions are written here.
        """
        async with self._lock:
            await self._transition(TaskStatus.PROCESSING, "task.started", "bulk action started")
        await self._run_job(
            BULK_ACTION_ACTIVITY,
            BulkJobInput(
                task_id=self._inp.task_id,
                entity_type=self._inp.entity_type,
                attempt=self._s.retry_count,
                owner=self._owner,
                seq=self._s.seq,
                params=self._inp.params,
                progress_interval_seconds=self._inp.limits.progress_interval_seconds,
            ),
            "bulk action",
            non_retryable=[BULK_INPUT_ERROR],
        )

    async def _await_upload(self) -> bool:
        """Wait for the input file; False (and the task failed) if it never came."""
        assert self._inp.input_file is not None and self._inp.upload_expires_at is not None
        expires = self._inp.upload_expires_at
        try:
            size = await workflow.execute_activity(
                AWAIT_UPLOAD_ACTIVITY,
                AwaitUploadInput(
                    task_id=self._inp.task_id,
                    key=str(self._inp.input_file["key"]),
                    expires_at=expires,
                    max_size=int(self._inp.input_file.get("maxSize") or 0) or (1 << 62),
                ),
                start_to_close_timeout=max(
                    timedelta(seconds=5), expires - workflow.now() + timedelta(seconds=30)
                ),
                heartbeat_timeout=timedelta(seconds=30),
                retry_policy=RetryPolicy(maximum_interval=timedelta(seconds=10)),
                result_type=int,
            )
        except ActivityError as err:
            if is_cancelled_exception(err):
                raise
            await self._fail_locked(_describe_failure(err))
            return False
        self._s.input_ready = True
        self._s.files = {**self._s.files, "input": {**self._inp.input_file, "size": size}}
        return True

    def _apply_bulk(self, result: BulkJobResult) -> None:
        self._counts = RecordCounts(
            total=result.total_records,
            processed=result.processed_records,
            success=result.success_records,
            failed=result.failed_records,
        )
        if result.files:
            self._s.files = {**self._s.files, **result.files}

    def _apply_failed_bulk(self, err: ActivityError) -> None:
        """Keep what a failed job reported: its counts and its result file, when it made one."""
        cause = err.cause
        details = cause.details if isinstance(cause, ApplicationError) else ()
        info = details[0] if details and isinstance(details[0], dict) else {}
        counts = info.get("counts")
        if isinstance(counts, list) and len(counts) == 4 and all(isinstance(n, int) for n in counts):
            self._counts = RecordCounts(
                total=counts[0], processed=counts[1], success=counts[2], failed=counts[3]
            )
        files = info.get("files")
        if isinstance(files, dict):
            self._s.files = {**self._s.files, **files}

    def _apply_result(self, result: DelegatedTaskResult | None) -> None:
        if result is None:
            return
        c = self._counts
        self._counts = RecordCounts(
            total=c.total if result.total_records is None else result.total_records,
            processed=c.processed if result.processed_records is None else result.processed_records,
            success=c.success if result.success_records is None else result.success_records,
            failed=c.failed if result.failed_records is None else result.failed_records,
        )
        self._s.output_file_url = result.output_file_url or self._s.output_file_url

    # -- failure, automatic retries, cancellation ------------------------------------------

    async def _fail_locked(self, reason: str) -> None:
        async with self._lock:
            if not self._status.is_closed:
                await self._fail(reason, reason)

    async def _fail(self, message: str, error: str) -> None:
        """Record a failed attempt, with the time of the automatic retry if one is due."""
        self._s.error_message = error
        delay = self._automatic_retry_delay()
        self._s.next_retry_at = workflow.now() + timedelta(seconds=delay) if delay is not None else None
        if self._s.next_retry_at is not None:
            when = self._s.next_retry_at.isoformat()
            message = f"{message}; automatic retry {self._s.auto_retries + 1} at {when}"
        await self._transition(TaskStatus.FAILED, "task.failed", message, "error")

    def _automatic_retry_delay(self) -> float | None:
        spec = self._inp.handler.auto_retry
        if spec is None or self._s.auto_retries >= spec.attempts:
            return None
        if self._s.retry_count >= self._inp.max_retries:
            return None
        return spec.delay_seconds(self._s.auto_retries + 1)

    async def _await_automatic_retry(self) -> None:
        assert self._s.next_retry_at is not None
        timeout = max(0.0, (self._s.next_retry_at - workflow.now()).total_seconds())
        try:
            await workflow.wait_condition(lambda: self._retry_now, timeout=timeout)
            how = "retried at once on request"
        except TimeoutError:
            how = "automatic retry"
        async with self._lock:
            await self._begin_retry(how, automatic=True)

    async def _begin_retry(self, message: str, *, automatic: bool) -> None:
        """Move a failed task back to pending for its next attempt (automatic or by hand).

        The attempt does the work again, so it counts again from zero (the total stays known).
        """
        self._counts = RecordCounts(total=self._counts.total)
        self._s.retry_count += 1
        if automatic:
            self._s.auto_retries += 1
        self._s.error_message = None
        self._s.completed_at = None
        self._s.next_retry_at = None
        self._s.attempt_deadline = None
        self._s.last_report_at = workflow.now()
        self._retry_now = False
        self._retry_pending = False
        await self._transition(
            TaskStatus.PENDING,
            "task.retried",
            f"retry {self._s.retry_count} of {self._inp.max_retries}: {message}",
        )

    async def _finish_cancelled(self) -> bool:
        """Record the cancellation; a delegated activity has already been cancelled and awaited.

        Returns:
            False if the task had already ended (the cancellation came too late to matter).
        """
        self._retry_pending = False  # no retry will begin: a waiting report is refused now
        async with self._lock:
            if self._fenced or (self._status.is_closed and self._s.next_retry_at is None):
                return False
            reason = workflow.cancellation_reason()
            self._s.next_retry_at = None
            message = f"task cancelled: {reason}; cleanup done" if reason else "task cancelled; cleanup done"
            if self._stop_note:
                message = f"{message}; {self._stop_note}"
            await self._transition(TaskStatus.CANCELLED, "task.cancelled", message)
        return True

    # -- continue-as-new -------------------------------------------------------------------

    def _should_continue_as_new(self) -> bool:
        if self._inp.handler.kind is not HandlerKind.EXTERNAL or self._status.is_closed:
            return False
        return (
            self._reports_this_run >= self._inp.limits.max_reports_per_run
            or workflow.info().is_continue_as_new_suggested()
        )

    async def _continue_as_new(self) -> None:
        """Hand the whole state to a new run once every report of this run has been answered."""
        await workflow.wait_condition(workflow.all_handlers_finished)
        state = replace(
            self._s,
            status=self._status.value,
            total_records=self._counts.total,
            processed_records=self._counts.processed,
            success_records=self._counts.success,
            failed_records=self._counts.failed,
            owner=self._owner,
            runs=self._s.runs + 1,
            recent_report_ids=list(self._recent),
        )
        workflow.continue_as_new(
            replace(self._inp, state=state, retry_message=None, scheduled_at=None),
            search_attributes=TypedSearchAttributes(
                search_attribute_pairs(self._inp, self._status, self._counts.percentage)
            )
            if self._inp.search_attributes
            else None,
        )

    # -- state changes ---------------------------------------------------------------------

    def _counts_note(self) -> str:
        c = self._counts
        return (
            f"processed {c.processed}"
            + (f"/{c.total}" if c.total else "")
            + f" records ({c.success} ok, {c.failed} failed)"
        )

    def _mark_dirty(self, note: str, *, log: str | None) -> None:
        self._s.dirty = True
        self._s.last_message = note
        self._show_details()
        if log is None:
            return
        if len(self._s.pending_logs) < self._inp.limits.buffered_messages:
            self._s.pending_logs.append(LogLine("info", log, workflow.now()))
        else:
            self._s.omitted_messages += 1

    async def _transition(self, status: TaskStatus, event: str, message: str, level: str = "info") -> None:
        ensure_transition(self._status, status)
        self._status = status
        if status is TaskStatus.PROCESSING and self._s.started_at is None:
            self._s.started_at = workflow.now()
        if status in (TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.CANCELLED):
            self._s.completed_at = workflow.now()
        await self._write(event, message, level)
        if self._inp.callback_url and status in WEBHOOK_EVENTS and workflow.patched(WEBHOOK_PATCH):
            await self._send_webhook(status)

    async def _send_webhook(self, status: TaskStatus) -> None:
        """Start the webhook of the final transition just mirrored, as an abandoned child workflow.

        The child retries on its own schedule and outlives this run: a slow receiver never keeps
        the run open (a failed task can be retried, a cancelled run ends). Only its start is
        awaited, shielded like the mirror write, so a cancellation arriving meanwhile loses nothing.
        """
        delivery = WebhookDelivery(
            task_id=self._inp.task_id, seq=self._s.seq, status=status.value, event=WEBHOOK_EVENTS[status]
        )
        start = asyncio.create_task(
            workflow.start_child_workflow(
                WEBHOOK_WORKFLOW_TYPE,
                delivery,
                id=f"webhook-{delivery.task_id}-{delivery.seq}",
                parent_close_policy=workflow.ParentClosePolicy.ABANDON,
                cancellation_type=workflow.ChildWorkflowCancellationType.ABANDON,
            )
        )
        try:
            await asyncio.shield(start)
        except asyncio.CancelledError:
            with contextlib.suppress(WorkflowAlreadyStartedError):
                await start
            raise
        except WorkflowAlreadyStartedError:
            pass  # this transition's webhook exists already (a reset replayed the transition)

    async def _write(
        self, event: str, message: str, level: str = "info", *, log_message: bool = True
    ) -> None:
        """Mirror the whole state with one event and its log lines (the caller holds the lock).

        The log lines are the report messages buffered since the last write, then ``message``
        (unless ``log_message`` is off and buffered lines already tell the story).
        """
        claim_seq = None if self._s.claimed else self._s.seq
        self._s.seq += 1
        logs = self._s.pending_logs
        if self._s.omitted_messages:
            logs = [*logs, LogLine("info", f"{self._s.omitted_messages} more report messages not logged")]
        if log_message or not logs:
            logs = [*logs, LogLine(level, message)]
        self._s.pending_logs, self._s.omitted_messages = [], 0
        self._s.dirty = False
        self._s.last_message = message
        self._show_details()
        now = workflow.now()
        self._last_flush = now
        self._upsert_search_attributes()
        c = self._counts
        write = workflow.start_local_activity(
            MIRROR_ACTIVITY,
            MirrorWrite(
                task_id=self._inp.task_id,
                seq=self._s.seq,
                run_id=workflow.info().run_id,
                owner=self._owner,
                claim_seq=claim_seq,
                status=self._status.value,
                event_type=event,
                message=message,
                level=level,
                total_records=c.total,
                processed_records=c.processed,
                success_records=c.success,
                failed_records=c.failed,
                progress_percentage=c.percentage,
                started_at=self._s.started_at,
                completed_at=self._s.completed_at,
                error_message=self._s.error_message,
                output_file_url=self._s.output_file_url,
                files=self._s.files or None,
                retry_count=self._s.retry_count,
                next_retry_at=self._s.next_retry_at,
                at=now,
                logs=logs,
            ),
            start_to_close_timeout=MIRROR_TIMEOUT,
            retry_policy=MIRROR_RETRY,
            result_type=str,
        )
        try:
            outcome = await asyncio.shield(write)
        except asyncio.CancelledError:
            # The run is being cancelled while it writes: finish the write first, or the run would
            # not know whether the row took it (its sequence and claim would no longer match the
            # row's, and the cancellation's own write be fenced out). Then cancel.
            self._written(await write)
            raise
        self._written(outcome)

    def _written(self, outcome: str) -> None:
        if MirrorOutcome(outcome) is MirrorOutcome.FENCED:
            # Another attempt took the task over (or it was deleted): stop, write nothing more.
            self._fenced = "another run owns this task now, or it was deleted; this run stopped"
            raise ApplicationError(self._fenced, type=SUPERSEDED_ERROR, non_retryable=True)
        self._s.claimed = True

    def _show_details(self) -> None:
        """Keep the Web UI's current details up to date (no command: replays as before)."""
        workflow.set_current_details(
            current_details(
                self._status,
                self._counts,
                message=self._s.last_message,
                error=self._s.error_message,
                retry_count=self._s.retry_count,
                max_retries=self._inp.max_retries,
                next_retry_at=self._s.next_retry_at,
            )
        )

    def _upsert_search_attributes(self) -> None:
        progress = int(self._counts.percentage)
        if not self._inp.search_attributes or (self._status, progress) == (
            self._sa_status,
            self._sa_progress,
        ):
            return
        updates: list[SearchAttributeUpdate[Any]] = []
        if self._status is not self._sa_status:
            updates.append(TASK_STATUS_KEY.value_set(self._status.value))
        if progress != self._sa_progress:
            updates.append(PROGRESS_KEY.value_set(progress))
        workflow.upsert_search_attributes(updates)
        self._sa_status, self._sa_progress = self._status, progress
