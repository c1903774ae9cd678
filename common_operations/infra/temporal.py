"""Temporal client side: connecting, and the gateway the service layer uses to reach workflows."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, replace
from datetime import timedelta

from temporalio.api.enums.v1 import IndexedValueType
from temporalio.api.operatorservice.v1 import AddSearchAttributesRequest, ListSearchAttributesRequest
from temporalio.client import (
    Client,
    WorkflowExecutionStatus,
    WorkflowFailureError,
    WorkflowHandle,
    WorkflowUpdateFailedError,
)
from temporalio.common import TypedSearchAttributes, WorkflowIDConflictPolicy, WorkflowIDReusePolicy
from temporalio.exceptions import ApplicationError, WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

from common_operations.domain.errors import (
    DomainError,
    InvalidTransition,
    ServiceUnavailable,
    TaskNotFound,
    ValidationFailed,
)
from common_operations.domain.status import TaskStatus
from common_operations.domain.task import ProgressReport
from common_operations.domain.workflow_types import (
    INT_SEARCH_ATTRIBUTES,
    KEYWORD_SEARCH_ATTRIBUTES,
    PROGRESS_QUERY,
    REPORT_PROGRESS_UPDATE,
    ProgressSnapshot,
    TaskWorkflowInput,
    workflow_id_for,
)
from common_operations.workflows.task_workflow import TaskWorkflow, search_attribute_pairs

_ERRORS_BY_CODE: dict[str, type[DomainError]] = {
    cls.code: cls for cls in (InvalidTransition, ValidationFailed, TaskNotFound)
}


async def connect(address: str, namespace: str) -> Client:
    """Connect a client, failing clearly when the server cannot be reached.

    Raises:
        ServiceUnavailable: no Temporal server answers at ``address``.
    """
    try:
        return await Client.connect(address, namespace=namespace)
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


@dataclass(frozen=True, slots=True)
class RunInfo:
    """What Temporal says about the latest run of a task's workflow."""

    run_id: str
    status: WorkflowExecutionStatus | None


def _unavailable(err: RPCError) -> ServiceUnavailable:
    return ServiceUnavailable(f"Temporal request failed: {err.message}", grpc_status=err.status.name)


class TaskWorkflows:
    """Starts, signals and inspects ``TaskWorkflow`` runs for the service layer."""

    def __init__(self, client: Client, task_queue: str, *, search_attributes: bool = True) -> None:
        """Use ``client`` and start workflows on ``task_queue``.

        Args:
            client: a connected Temporal client.
            task_queue: where the service's worker polls.
            search_attributes: index tasks by search attributes (off for the time-skipping server).
        """
        self.client = client
        self.task_queue = task_queue
        self.search_attributes = search_attributes

    def _handle(self, task_id: str) -> WorkflowHandle[TaskWorkflow, ProgressSnapshot]:
        return self.client.get_workflow_handle_for(TaskWorkflow.run, workflow_id_for(task_id))

    async def start(self, inp: TaskWorkflowInput) -> str:
        """Start a run for the task (a retry starts a new run of the same id).

        Returns:
            The run id.

        Raises:
            InvalidTransition: a run is already working on the task.
            ServiceUnavailable: Temporal did not answer.
        """
        inp = replace(inp, search_attributes=self.search_attributes)
        try:
            handle = await self.client.start_workflow(
                TaskWorkflow.run,
                inp,
                id=workflow_id_for(inp.task_id),
                task_queue=self.task_queue,
                id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE,
                id_conflict_policy=WorkflowIDConflictPolicy.FAIL,
                search_attributes=TypedSearchAttributes(
                    search_attribute_pairs(inp, TaskStatus(inp.status), 0)
                )
                if inp.search_attributes
                else None,
            )
        except WorkflowAlreadyStartedError as err:
            raise InvalidTransition("a workflow run is already working on this task") from err
        except RPCError as err:
            raise _unavailable(err) from err
        assert handle.result_run_id is not None
        return handle.result_run_id

    async def report_progress(self, task_id: str, report: ProgressReport) -> ProgressSnapshot:
        """Send a progress report as a Temporal Update and wait for it to be applied.

        Raises:
            InvalidTransition / ValidationFailed: the workflow's validator rejected the report.
            TaskNotFound: no run is working on the task.
        """
        try:
            snapshot: ProgressSnapshot = await self._handle(task_id).execute_update(
                REPORT_PROGRESS_UPDATE, report, result_type=ProgressSnapshot
            )
            return snapshot
        except WorkflowUpdateFailedError as err:
            cause = err.cause
            if isinstance(cause, ApplicationError) and cause.type in _ERRORS_BY_CODE:
                details = cause.details[0] if cause.details else {}
                raise _ERRORS_BY_CODE[cause.type](
                    cause.message, **(details if isinstance(details, dict) else {})
                ) from err
            raise InvalidTransition(f"progress report rejected: {cause}") from err
        except RPCError as err:
            if err.status is RPCStatusCode.NOT_FOUND:
                raise InvalidTransition("no workflow run is working on this task") from err
            raise _unavailable(err) from err

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
            raise _unavailable(err) from err

    async def cancel(self, task_id: str, wait: float) -> bool:
        """Request cancellation and wait up to ``wait`` seconds for the run to close.

        Returns:
            False if no run exists or it already closed; True once cancellation was requested.
        """
        handle = self.client.get_workflow_handle(workflow_id_for(task_id))
        try:
            await handle.cancel()
        except RPCError as err:
            if err.status is RPCStatusCode.NOT_FOUND:
                return False
            raise _unavailable(err) from err
        # The run ends as cancelled (a failure for result()); we only wait for its cleanup.
        with contextlib.suppress(WorkflowFailureError, TimeoutError):
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
            raise _unavailable(err) from err
        return RunInfo(run_id=desc.run_id, status=desc.status)

    async def ping(self) -> None:
        """Raise if the Temporal frontend does not answer."""
        ok = await self.client.service_client.check_health(timeout=timedelta(seconds=3))
        if not ok:
            raise ServiceUnavailable("Temporal health check failed")
