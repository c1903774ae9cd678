"""Temporal client side: connecting, and the gateway the service layer uses to reach workflows.

Temporal's errors are translated here, once, into the domain's: an invalid argument (a payload over
the server's limit, say) is the caller's mistake (400), resource exhaustion is "retry later" (429),
a failed precondition a conflict (409), and an unreachable server is 503 — never a failed task.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from temporalio.api.enums.v1 import EventType, IndexedValueType
from temporalio.api.operatorservice.v1 import AddSearchAttributesRequest, ListSearchAttributesRequest
from temporalio.api.workflowservice.v1 import DescribeNamespaceRequest
from temporalio.client import (
    Client,
    WorkflowExecution,
    WorkflowExecutionStatus,
    WorkflowFailureError,
    WorkflowHandle,
    WorkflowHistoryEventFilterType,
    WorkflowUpdateFailedError,
    WorkflowUpdateRPCTimeoutOrCancelledError,
)
from temporalio.common import TypedSearchAttributes, WorkflowIDConflictPolicy, WorkflowIDReusePolicy
from temporalio.exceptions import ApplicationError, WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

from common_operations.domain.errors import (
    DomainError,
    InvalidTransition,
    RateLimited,
    ReportLimitReached,
    ServiceUnavailable,
    TaskNotFound,
    ValidationFailed,
)
from common_operations.domain.status import TaskStatus
from common_operations.domain.task import ProgressReport, RecordCounts
from common_operations.domain.workflow_details import static_details, static_summary
from common_operations.domain.workflow_types import (
    INT_SEARCH_ATTRIBUTES,
    KEYWORD_SEARCH_ATTRIBUTES,
    PROGRESS_QUERY,
    RECONCILER_STATUS_QUERY,
    REPORT_PROGRESS_UPDATE,
    RETRY_NOW_UPDATE,
    SUPERSEDED_ERROR,
    ProgressSnapshot,
    ReconcilerState,
    TaskWorkflowInput,
    reconciler_workflow_id,
    workflow_id_for,
)
from common_operations.infra import telemetry
from common_operations.workflows.task_workflow import TaskWorkflow, search_attribute_pairs

log = logging.getLogger(__name__)

# Rejections raised by the workflow's validator or handler, by their stable code.
_ERRORS_BY_CODE: dict[str, type[DomainError]] = {
    cls.code: cls for cls in (InvalidTransition, ValidationFailed, TaskNotFound, ReportLimitReached)
}

# A report that met a run in the middle of continuing as new is sent again (same Update id): the
# workflow remembers applied ids across runs, so it is applied once.
_REPORT_ATTEMPTS = 6
_REPORT_BACKOFF = 0.2
_TRANSIENT_UPDATE_FAILURES = frozenset({"AcceptedUpdateCompletedWorkflow"})


async def connect(address: str, namespace: str) -> Client:
    """Connect a client, failing clearly when the server cannot be reached.

    Raises:
        ServiceUnavailable: no Temporal server answers at ``address``.
    """
    try:
        # With tracing on, client calls, workflows and activities (of workers on this client) get
        # spans, and the trace context travels in Temporal headers.
        return await Client.connect(
            address, namespace=namespace, interceptors=telemetry.temporal_interceptors()
        )
    except RuntimeError as err:
        raise ServiceUnavailable(f"cannot reach Temporal at {address}: {err}") from err


async def ensure_search_attributes(client: Client, namespace: str) -> None:
    """Register the search attributes of DESIGN.md §5 if the server lacks them (idempotent)."""
    existing = await client.operator_service.list_search_attributes(
        ListSearchAttributesRequest(namespace=namespace)
    )
    wanted = dict.fromkeys(KEYWORD_SEARCH_ATTRIBUTES, IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD)
    wanted |= dict.fromkeys(INT_SEARCH_ATTRIBUTES, IndexedValueType.INDEXED_VALUE_TYPE_INT)
    missing = {k: v for k, v in wanted.items() if k not in existing.custom_attributes}
    if missing:
        await client.operator_service.add_search_attributes(
            AddSearchAttributesRequest(search_attributes=missing, namespace=namespace)
        )


def domain_error(err: RPCError) -> DomainError:
    """What a Temporal RPC error means for the caller (module docstring)."""
    status = err.status
    message = f"Temporal refused the request: {err.message}"
    if status is RPCStatusCode.INVALID_ARGUMENT:
        return ValidationFailed(message)
    if status is RPCStatusCode.RESOURCE_EXHAUSTED:
        return RateLimited(f"Temporal is busy: {err.message}", retry_after=1.0)
    if status in (RPCStatusCode.FAILED_PRECONDITION, RPCStatusCode.ALREADY_EXISTS):
        return InvalidTransition(message)
    if status is RPCStatusCode.NOT_FOUND:
        return TaskNotFound(message)
    return ServiceUnavailable(f"Temporal request failed: {err.message}", grpc_status=status.name)


@dataclass(frozen=True, slots=True)
class RunInfo:
    """What Temporal says about the latest run of a task's workflow."""

    run_id: str
    status: WorkflowExecutionStatus | None
    close_time: datetime | None = None

    @property
    def running(self) -> bool:
        """Whether the run is still open."""
        return self.status is WorkflowExecutionStatus.RUNNING


class RunAlreadyClosed(Exception):
    """A task's first run was asked for, but a closed run of its workflow exists already."""


class _PerKeyLimiter:
    """At most ``permits`` holders per key at once; waiting longer than ``timeout`` is refused.

    Temporal refuses more than ``history.maxInFlightUpdates`` (default 10) Updates in flight on one
    run, and only after retrying for about 15 seconds. Queueing a task's reports here keeps this
    process below that limit, so many parallel reporters wait briefly instead of failing.
    """

    def __init__(self, permits: int, timeout: float) -> None:
        self._permits = permits
        self._timeout = timeout
        self._entries: dict[str, tuple[asyncio.Semaphore, list[int]]] = {}

    @contextlib.asynccontextmanager
    async def hold(self, key: str) -> AsyncIterator[None]:
        semaphore, users = self._entries.setdefault(key, (asyncio.Semaphore(self._permits), [0]))
        users[0] += 1
        try:
            try:
                await asyncio.wait_for(semaphore.acquire(), self._timeout)
            except TimeoutError:
                raise RateLimited(
                    f"too many progress reports for this task are waiting (more than {self._permits} "
                    f"in flight for {self._timeout:g}s); retry shortly",
                    retry_after=1.0,
                ) from None
            try:
                yield
            finally:
                semaphore.release()
        finally:
            users[0] -= 1
            if not users[0]:
                del self._entries[key]


class TaskWorkflows:
    """Starts, updates, cancels and inspects ``TaskWorkflow`` runs for the service layer."""

    def __init__(
        self,
        client: Client,
        task_queue: str,
        *,
        search_attributes: bool = True,
        eager_start: bool = False,
        max_in_flight_reports: int = 5,
        report_queue_timeout: float = 30.0,
    ) -> None:
        """Use ``client`` and start workflows on ``task_queue``.

        Args:
            client: a connected Temporal client.
            task_queue: where the service's worker polls.
            search_attributes: index tasks by search attributes (off for the time-skipping server).
            eager_start: ask the server to hand a new run's first workflow task straight to this
                process's worker (only useful when a worker shares ``client``).
            max_in_flight_reports: progress reports of one task sent to Temporal at once by this
                process (replicas × this should stay below the server's in-flight Update limit).
            report_queue_timeout: how long a report may wait for its turn before 429.
        """
        self.client = client
        self.task_queue = task_queue
        self.search_attributes = search_attributes
        self.eager_start = eager_start
        self._reports = _PerKeyLimiter(max_in_flight_reports, report_queue_timeout)

    def _handle(self, task_id: str) -> WorkflowHandle[TaskWorkflow, ProgressSnapshot]:
        # No run id: the handle follows the workflow to its latest run (continue-as-new, retries).
        return self.client.get_workflow_handle_for(TaskWorkflow.run, workflow_id_for(task_id))

    async def start(self, inp: TaskWorkflowInput, *, new_attempt: bool = False) -> str:
        """Start a run of the task's workflow.

        The first run of a task (``new_attempt=False``) joins a run that is already working (the
        creator and a cancel or the reconciler may race to start it) and never starts after a run
        has closed. A retry (``new_attempt=True``) starts a new run after a closed one and refuses
        while one is open.

        Returns:
            The run id.

        Raises:
            RunAlreadyClosed: a first run was asked for, but the workflow has run and closed.
            InvalidTransition: a retry was asked for while a run is working on the task.
            ServiceUnavailable / RateLimited / ValidationFailed: Temporal's answer (see module doc).
        """
        inp = replace(inp, search_attributes=self.search_attributes)
        state = inp.state
        progress = RecordCounts(total=state.total_records, processed=state.processed_records).percentage
        try:
            handle = await self.client.start_workflow(
                TaskWorkflow.run,
                inp,
                id=workflow_id_for(inp.task_id),
                task_queue=self.task_queue,
                id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE
                if new_attempt
                else WorkflowIDReusePolicy.REJECT_DUPLICATE,
                id_conflict_policy=WorkflowIDConflictPolicy.FAIL
                if new_attempt
                else WorkflowIDConflictPolicy.USE_EXISTING,
                search_attributes=TypedSearchAttributes(
                    search_attribute_pairs(inp, TaskStatus(state.status), progress)
                )
                if inp.search_attributes
                else None,
                request_eager_start=self.eager_start,
                # What the Web UI lists and heads the workflow's page with (the run keeps its
                # current details up to date itself).
                static_summary=static_summary(inp),
                static_details=static_details(inp),
            )
        except WorkflowAlreadyStartedError as err:
            if new_attempt:
                raise InvalidTransition("a workflow run is already working on this task") from err
            raise RunAlreadyClosed(workflow_id_for(inp.task_id)) from err
        except RPCError as err:
            raise domain_error(err) from err
        assert handle.result_run_id is not None
        return handle.result_run_id

    async def report_progress(self, task_id: str, report: ProgressReport) -> ProgressSnapshot:
        """Send a progress report as a Temporal Update and wait for it to be applied.

        The report's id (its ``report_id``, or one made here) is the Update id, so this method's own
        retries and a caller's retries are applied once.

        Raises:
            InvalidTransition / ValidationFailed: the workflow rejected the report.
            RateLimited: too many reports of this task are in flight.
            ServiceUnavailable: Temporal did not answer.
        """
        report_id = report.report_id or uuid.uuid4().hex
        async with self._reports.hold(task_id):
            for attempt in range(1, _REPORT_ATTEMPTS + 1):
                try:
                    snapshot: ProgressSnapshot = await self._handle(task_id).execute_update(
                        REPORT_PROGRESS_UPDATE, report, id=report_id, result_type=ProgressSnapshot
                    )
                    return snapshot
                except WorkflowUpdateFailedError as err:
                    cause = err.cause
                    if not isinstance(cause, ApplicationError):
                        raise InvalidTransition(f"progress report rejected: {cause}") from err
                    if cause.type not in _TRANSIENT_UPDATE_FAILURES or attempt == _REPORT_ATTEMPTS:
                        raise _rejection(cause) from err
                except WorkflowUpdateRPCTimeoutOrCancelledError as err:
                    # Sent, but its outcome did not come back in time (the run's workflow task is
                    # late: its worker died, or its mirror write waits for Postgres). It may still
                    # apply: the caller sends it again with the same report id, applied once.
                    raise ServiceUnavailable(
                        "the task's workflow did not answer the report in time; send it again with "
                        "the same reportId"
                    ) from err
                except RPCError as err:
                    if err.status is RPCStatusCode.NOT_FOUND:
                        raise InvalidTransition("no workflow run is working on this task") from err
                    if not _is_transient(err):
                        raise domain_error(err) from err
                    if attempt == _REPORT_ATTEMPTS:
                        raise ServiceUnavailable(
                            f"the task's workflow cannot take the report right now: {err.message}"
                        ) from err
                log.debug("progress report %s of task %s met a run switch; retrying", report_id, task_id)
                await asyncio.sleep(_REPORT_BACKOFF * attempt)
        raise AssertionError("unreachable")  # pragma: no cover

    async def retry_now(self, task_id: str) -> ProgressSnapshot:
        """Ask a run that waits to retry its failed task automatically to retry it now.

        Raises:
            InvalidTransition: no automatic retry is waiting.
        """
        try:
            snapshot: ProgressSnapshot = await self._handle(task_id).execute_update(
                RETRY_NOW_UPDATE, result_type=ProgressSnapshot
            )
            return snapshot
        except WorkflowUpdateFailedError as err:
            cause = err.cause
            if isinstance(cause, ApplicationError):
                raise _rejection(cause) from err
            raise InvalidTransition(f"retry rejected: {cause}") from err
        except RPCError as err:
            if err.status is RPCStatusCode.NOT_FOUND:
                raise InvalidTransition("no workflow run is waiting to retry this task") from err
            raise domain_error(err) from err

    async def progress(self, task_id: str) -> ProgressSnapshot:
        """The live ``progress`` query of the task's latest run."""
        try:
            snapshot: ProgressSnapshot = await self._handle(task_id).query(
                PROGRESS_QUERY, result_type=ProgressSnapshot
            )
            return snapshot
        except RPCError as err:
            if err.status is RPCStatusCode.NOT_FOUND:
                raise TaskNotFound("the task has no workflow run") from err
            raise domain_error(err) from err

    async def cancel(self, task_id: str, reason: str, wait: float) -> bool:
        """Request cancellation with ``reason`` and wait up to ``wait`` seconds for the run to close.

        Returns:
            False if no run is open (never started, or already closed); True once requested.
        """
        handle = self.client.get_workflow_handle(workflow_id_for(task_id))
        try:
            await handle.cancel(reason=reason)
        except RPCError as err:
            if err.status is RPCStatusCode.NOT_FOUND:
                return False
            raise domain_error(err) from err
        # The run ends as cancelled (a failure for result()); we only wait for its cleanup.
        with contextlib.suppress(WorkflowFailureError, TimeoutError, RPCError):
            await asyncio.wait_for(handle.result(), timeout=wait)
        return True

    async def describe(self, task_id: str) -> RunInfo | None:
        """The latest run's id and status, or None if the workflow does not exist."""
        try:
            desc = await self.client.get_workflow_handle(workflow_id_for(task_id)).describe(
                rpc_timeout=timedelta(seconds=10)
            )
        except RPCError as err:
            if err.status is RPCStatusCode.NOT_FOUND:
                return None
            raise domain_error(err) from err
        return RunInfo(run_id=desc.run_id, status=desc.status, close_time=desc.close_time)

    async def close_reason(self, workflow_id: str, run_id: str) -> str | None:
        """Why a run closed, from its close event (an operator's termination reason and identity)."""
        handle = self.client.get_workflow_handle(workflow_id, run_id=run_id)
        async for event in handle.fetch_history_events(
            event_filter_type=WorkflowHistoryEventFilterType.CLOSE_EVENT
        ):
            if event.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_TERMINATED:
                attrs = event.workflow_execution_terminated_event_attributes
                who = f" ({attrs.identity})" if attrs.identity else ""
                return f"{attrs.reason or 'no reason given'}{who}"
            if event.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_FAILED:
                return event.workflow_execution_failed_event_attributes.failure.message or None
        return None

    def list_runs(self, query: str) -> AsyncIterator[WorkflowExecution]:
        """Every execution matching a visibility query, page after page."""
        return self.client.list_workflows(query, page_size=1000)

    async def reports_problems(self) -> bool:
        """Whether the server sets ``TemporalReportedProblems`` on runs whose workflow task fails."""
        try:
            ns = await self.client.workflow_service.describe_namespace(
                DescribeNamespaceRequest(namespace=self.client.namespace)
            )
        except RPCError as err:
            raise domain_error(err) from err
        return bool(ns.namespace_info.capabilities.reported_problems_search_attribute)

    async def reconciler_status(self) -> ReconcilerState:
        """The ``status`` query of this task queue's reconciler workflow.

        Raises:
            ServiceUnavailable: it does not run, or no worker answered within a few seconds.
        """
        handle = self.client.get_workflow_handle(reconciler_workflow_id(self.task_queue))
        try:
            state: ReconcilerState = await handle.query(
                RECONCILER_STATUS_QUERY, result_type=ReconcilerState, rpc_timeout=timedelta(seconds=3)
            )
        except RPCError as err:
            raise ServiceUnavailable(f"the reconciler workflow does not answer: {err.message}") from err
        return state

    async def ping(self) -> None:
        """Raise if the Temporal frontend does not answer."""
        ok = await self.client.service_client.check_health(timeout=timedelta(seconds=3))
        if not ok:
            raise ServiceUnavailable("Temporal health check failed")


def _rejection(cause: ApplicationError) -> DomainError:
    """A workflow's rejection as the domain error of its code (details kept)."""
    if cause.type == SUPERSEDED_ERROR:
        return InvalidTransition("the task changed while the report was applied; read it again")
    details: Any = cause.details[0] if cause.details else {}
    cls = _ERRORS_BY_CODE.get(cause.type or "", InvalidTransition)
    return cls(cause.message, **(details if isinstance(details, dict) else {}))


def _is_transient(err: RPCError) -> bool:
    # The server answers FAILED_PRECONDITION "unexpected workflow task failure" when a continue-as-new
    # raced an Update's workflow task, and "... due to Workflow Task in failed state" while the run's
    # workflow task is being retried (its worker died, it timed out): the Update was not accepted
    # and can be sent again.
    message = err.message.lower()
    return err.status is RPCStatusCode.FAILED_PRECONDITION and (
        "workflow task failure" in message or "workflow task in failed state" in message
    )
