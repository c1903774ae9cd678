"""``TaskWorkflow``: one run per task attempt, the single writer of a task's state.

Every change of state gets the next sequence number and is mirrored to Postgres by a local activity
(no server round trip), so the mirror can order writes and ignore stale ones. The ``progress`` query
answers from memory; external workers report through the ``report_progress`` update, whose validator
rejects bad reports before they reach history.
"""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta
from typing import Any

from temporalio import workflow
from temporalio.common import RetryPolicy, SearchAttributeKey, SearchAttributePair
from temporalio.exceptions import ActivityError, ApplicationError, is_cancelled_exception

with workflow.unsafe.imports_passed_through():
    from common_operations.domain.errors import DomainError, InvalidTransition, ValidationFailed
    from common_operations.domain.status import TaskStatus, ensure_accepts_reports, ensure_transition
    from common_operations.domain.task import ProgressReport, RecordCounts, apply_report
    from common_operations.domain.workflow_types import (
        MIRROR_ACTIVITY,
        PROGRESS_QUERY,
        REPORT_PROGRESS_UPDATE,
        SA_ENTITY_TYPE,
        SA_PROGRESS,
        SA_REQUESTED_BY,
        SA_TASK_STATUS,
        SA_TASK_TYPE,
        WORKFLOW_TYPE,
        DelegatedTaskInput,
        DelegatedTaskResult,
        HandlerKind,
        MirrorWrite,
        ProgressSnapshot,
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


def _describe_failure(err: BaseException) -> str:
    cause = err.cause if isinstance(err, ActivityError) and err.cause else err
    return str(cause) or type(cause).__name__


@workflow.defn(name=WORKFLOW_TYPE)
class TaskWorkflow:
    """Runs one attempt of a task and mirrors every state change."""

    @workflow.init
    def __init__(self, inp: TaskWorkflowInput) -> None:
        """Restore the state the service handed over (status, sequence, counts)."""
        self._inp = inp
        self._status = TaskStatus(inp.status)
        self._seq = inp.seq
        self._counts = RecordCounts(total=inp.total_records)
        self._started_at: datetime | None = None
        self._completed_at: datetime | None = None
        self._error: str | None = None
        self._output_file_url: str | None = None
        self._reports = 0
        self._lock = asyncio.Lock()

    @workflow.run
    async def run(self, inp: TaskWorkflowInput) -> ProgressSnapshot:
        """Wait for the schedule, hand the work to its handler and record the outcome."""
        try:
            if self._status is TaskStatus.SCHEDULED:
                await self._wait_for_schedule()
            if inp.handler.kind is HandlerKind.DELEGATED:
                await self._run_delegated()
            else:
                await self._await_external()
        except BaseException as err:
            if not is_cancelled_exception(err):
                raise
            if await self._finish_cancelled():
                await workflow.wait_condition(workflow.all_handlers_finished)
                raise
        await workflow.wait_condition(workflow.all_handlers_finished)
        if self._status is TaskStatus.FAILED:
            raise ApplicationError(self._error or "task failed", type="TASK_FAILED", non_retryable=True)
        return self.progress()

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
            seq=self._seq,
            error_message=self._error,
        )

    @workflow.update(name=REPORT_PROGRESS_UPDATE)
    async def report_progress(self, report: ProgressReport) -> ProgressSnapshot:
        """Apply a worker's progress report; the first one starts the task, ``is_completed`` ends it."""
        async with self._lock:
            try:
                self._check_report(report)
                counts = apply_report(self._counts, report)
            except DomainError as err:
                # State may have moved between validation and now (e.g. two completions at once).
                raise _rejection(err) from err
            self._counts = counts
            self._reports += 1
            note = report.message or (
                f"processed {counts.processed}"
                + (f"/{counts.total}" if counts.total else "")
                + f" records ({counts.success} ok, {counts.failed} failed)"
            )
            if self._status is TaskStatus.PENDING:
                await self._transition(TaskStatus.PROCESSING, "task.started", f"worker started: {note}")
            elif not report.is_completed:
                await self._write("task.progress", note)
            if report.is_completed:
                if report.error_message:
                    self._error = report.error_message
                    await self._transition(
                        TaskStatus.FAILED, "task.failed", f"worker failed: {report.error_message}", "error"
                    )
                else:
                    await self._transition(TaskStatus.COMPLETED, "task.completed", f"completed: {note}")
        return self.progress()

    @report_progress.validator
    def _validate_report(self, report: ProgressReport) -> None:
        try:
            self._check_report(report)
            apply_report(self._counts, report)
        except DomainError as err:
            raise _rejection(err) from err

    def _check_report(self, report: ProgressReport) -> None:
        ensure_accepts_reports(self._status)
        if self._inp.handler.kind is HandlerKind.DELEGATED:
            if self._status is not TaskStatus.PROCESSING:
                raise InvalidTransition("the delegated activity has not started yet")
            if report.is_completed:
                raise ValidationFailed(
                    "a delegated task completes when its activity returns; isCompleted is not "
                    "accepted for it",
                    field="isCompleted",
                )

    # -- handlers --------------------------------------------------------------------------

    async def _wait_for_schedule(self) -> None:
        if self._inp.scheduled_at is not None:
            delay = self._inp.scheduled_at - workflow.now()
            if delay > timedelta(0):
                await workflow.sleep(delay)
        async with self._lock:
            await self._transition(TaskStatus.PENDING, "task.pending", "scheduled time reached")

    async def _await_external(self) -> None:
        """Wait for reports; fail the task when the worker stays silent or the run takes too long."""
        silence = self._inp.handler.heartbeat_timeout_seconds
        deadline = workflow.now() + timedelta(seconds=self._inp.task_timeout_seconds)
        while not self._status.is_closed:
            remaining = (deadline - workflow.now()).total_seconds()
            seen = self._reports

            def reported_or_closed(seen: int = seen) -> bool:
                return self._reports != seen or self._status.is_closed

            try:
                await workflow.wait_condition(
                    reported_or_closed,
                    timeout=max(0.001, min(silence, remaining)),
                )
            except TimeoutError:
                if remaining <= silence:
                    reason = f"task exceeded its timeout of {self._inp.task_timeout_seconds:g}s"
                else:
                    reason = (
                        f"no progress report from the external worker within {silence:g}s "
                        f"(heartbeat timeout of task type {self._inp.task_type!r})"
                    )
                await self._fail(reason)

    async def _run_delegated(self) -> None:
        spec = self._inp.handler
        assert spec.activity and spec.task_queue, "delegated handler needs activity and task_queue"
        async with self._lock:
            await self._transition(
                TaskStatus.PROCESSING,
                "task.started",
                f"delegated to activity {spec.activity} on task queue {spec.task_queue}",
            )
        timeout = timedelta(seconds=self._inp.task_timeout_seconds)
        try:
            result = await workflow.execute_activity(
                spec.activity,
                DelegatedTaskInput(
                    task_id=self._inp.task_id,
                    task_type=self._inp.task_type,
                    entity_type=self._inp.entity_type,
                    requested_by=self._inp.requested_by,
                    params=self._inp.params,
                    attempt_of_task=self._inp.retry_count,
                ),
                task_queue=spec.task_queue,
                schedule_to_close_timeout=timeout,
                start_to_close_timeout=timeout,
                heartbeat_timeout=timedelta(seconds=spec.heartbeat_timeout_seconds),
                retry_policy=RetryPolicy(
                    initial_interval=timedelta(seconds=spec.retry.initial_interval_seconds),
                    backoff_coefficient=spec.retry.backoff_coefficient,
                    maximum_interval=timedelta(seconds=spec.retry.maximum_interval_seconds),
                    maximum_attempts=spec.retry.maximum_attempts,
                ),
                cancellation_type=workflow.ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
                result_type=DelegatedTaskResult,
            )
        except ActivityError as err:
            if is_cancelled_exception(err):
                raise
            await self._fail(f"activity {spec.activity} failed: {_describe_failure(err)}")
            return
        async with self._lock:
            if self._status.is_closed:
                return
            self._apply_result(result)
            await self._transition(
                TaskStatus.COMPLETED, "task.completed", (result and result.message) or "activity completed"
            )

    def _apply_result(self, result: DelegatedTaskResult | None) -> None:
        if result is None:
            return
        c = self._counts
        total = c.total if result.total_records is None else result.total_records
        processed = c.processed if result.processed_records is None else result.processed_records
        self._counts = RecordCounts(
            total=total,
            processed=processed,
            success=c.success if result.success_records is None else result.success_records,
            failed=c.failed if result.failed_records is None else result.failed_records,
        )
        self._output_file_url = result.output_file_url or self._output_file_url

    async def _fail(self, reason: str) -> None:
        async with self._lock:
            if self._status.is_closed:
                return
            self._error = reason
            await self._transition(TaskStatus.FAILED, "task.failed", reason, "error")

    async def _finish_cancelled(self) -> bool:
        """Record the cancellation; the delegated activity has already been cancelled and awaited.

        Returns:
            False if the task had already ended (the cancellation came too late to matter).
        """
        async with self._lock:
            if self._status.is_closed:
                return False
            await self._transition(TaskStatus.CANCELLED, "task.cancelled", "task cancelled; cleanup done")
        return True

    # -- state changes ---------------------------------------------------------------------

    async def _transition(self, status: TaskStatus, event: str, message: str, level: str = "info") -> None:
        ensure_transition(self._status, status)
        self._status = status
        if status is TaskStatus.PROCESSING and self._started_at is None:
            self._started_at = workflow.now()
        if status in (TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.CANCELLED):
            self._completed_at = workflow.now()
        await self._write(event, message, level)

    async def _write(self, event: str, message: str, level: str = "info") -> None:
        self._seq += 1
        if self._inp.search_attributes:
            workflow.upsert_search_attributes(
                [
                    pair.key.value_set(pair.value)
                    for pair in search_attribute_pairs(self._inp, self._status, self._counts.percentage)
                ]
            )
        await workflow.execute_local_activity(
            MIRROR_ACTIVITY,
            MirrorWrite(
                task_id=self._inp.task_id,
                seq=self._seq,
                run_id=workflow.info().run_id,
                status=self._status.value,
                event_type=event,
                message=message,
                level=level,
                total_records=self._counts.total,
                processed_records=self._counts.processed,
                success_records=self._counts.success,
                failed_records=self._counts.failed,
                progress_percentage=self._counts.percentage,
                started_at=self._started_at,
                completed_at=self._completed_at,
                error_message=self._error,
                output_file_url=self._output_file_url,
                at=workflow.now(),
            ),
            start_to_close_timeout=MIRROR_TIMEOUT,
            retry_policy=MIRROR_RETRY,
        )
