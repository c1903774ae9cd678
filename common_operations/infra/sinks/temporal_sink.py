"""The ``temporal`` sink: another service owns the entity and takes rows in an activity on its queue.

Each batch (``sink.batch_size`` rows, 500 by default) of an import chunk runs as one
``SinkBatch`` workflow on this service's task queue (see
:mod:`common_operations.workflows.sink_batch_workflow` for the owner's contract), with the id
``sink-batch-<job_id>-<chunk_no>-<part>``. A batch whose workflow already completed (a chunk sent
again after a crash) is not started again: its earlier result is fetched, so its rows apply once. A
batch whose workflow failed may run again, so a retried import retries the owner too.

Exports are not served by this sink.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from temporalio import activity
from temporalio.client import Client, WorkflowFailureError, WorkflowHandle
from temporalio.common import WorkflowIDConflictPolicy, WorkflowIDReusePolicy
from temporalio.exceptions import FailureError, WorkflowAlreadyStartedError
from temporalio.service import RPCError

from common_operations.domain.entities import (
    EntitySpec,
    FieldSpec,
    ImportMode,
    Rejection,
    format_value,
)
from common_operations.domain.errors import quoted
from common_operations.domain.workflow_types import (
    SINK_BATCH_WORKFLOW_TYPE,
    SinkBatchInput,
    sink_batch_workflow_id,
)
from common_operations.infra.sinks.http import SinkRejected, SinkUnavailable, per_row_rejections

DEFAULT_BATCH_SIZE = 500
# The import activity says it is alive while a batch runs: the owner's retries may take longer than
# the import's heartbeat timeout, and a cancellation only reaches an activity through a heartbeat.
_HEARTBEAT_EVERY = 1.0


async def _result(handle: WorkflowHandle[Any, Any]) -> Any:
    waiting = asyncio.ensure_future(handle.result())
    try:
        while True:
            done, _ = await asyncio.wait({waiting}, timeout=_HEARTBEAT_EVERY)
            if done:
                return waiting.result()
            if activity.in_activity():
                activity.heartbeat()
    finally:
        # Cancelled (the import stopped): stop waiting; the batch itself finishes on its own and a
        # later attempt finds its result.
        waiting.cancel()


class TemporalSink:
    """Sends import chunks, batch by batch, to the activity of the service that owns the entity."""

    def __init__(
        self,
        entity: EntitySpec,
        client: Client,
        service_task_queue: str,
        *,
        fields: Sequence[FieldSpec] | None = None,
    ) -> None:
        """Bind the sink to an entity whose sink is ``temporal``.

        Args:
            entity: the declaration (``sink.task_queue`` and ``sink.activity`` take the rows).
            client: the service's Temporal client.
            service_task_queue: this service's task queue, where the batch workflows run.
            fields: the fields of the row tuples (the converter's); all declared fields by default.

        Raises:
            ValueError: the entity's sink is not a temporal sink with a task queue and activity.
        """
        sink = entity.sink
        if sink.kind != "temporal" or not sink.task_queue or not sink.activity:
            raise ValueError(f"entity {entity.name!r} has no temporal sink task_queue and activity")
        self.entity = entity
        self.client = client
        self.service_task_queue = service_task_queue
        self.owner_task_queue: str = sink.task_queue
        self.activity: str = sink.activity
        self.fields: tuple[FieldSpec, ...] = tuple(fields) if fields is not None else entity.fields
        self.batch_size = sink.batch_size or DEFAULT_BATCH_SIZE
        self.timeout = sink.timeout

    async def write_chunk(
        self,
        job_id: str,
        chunk_no: int,
        rows: Sequence[tuple[int, tuple[Any, ...]]],
        mode: ImportMode,
        dry_run: bool = False,
    ) -> list[Rejection]:
        """Hand one chunk to the owner, batch by batch; the rows it refused.

        Raises:
            SinkUnavailable: the owner's activity failed for good, or Temporal could not be reached
                (retry later).
            SinkRejected: the owner answered without a result for every row.
        """
        size = self.batch_size
        rejected: list[Rejection] = []
        for part, start in enumerate(range(0, len(rows), size), start=1):
            batch = rows[start : start + size]
            answer = await self._run(sink_batch_workflow_id(job_id, chunk_no, part), batch, mode, dry_run)
            rejected.extend(self._rejections(answer, batch))
        return rejected

    async def _run(
        self, workflow_id: str, rows: Sequence[tuple[int, tuple[Any, ...]]], mode: ImportMode, dry_run: bool
    ) -> Any:
        fields = self.fields
        inp = SinkBatchInput(
            task_queue=self.owner_task_queue,
            activity=self.activity,
            entity_type=self.entity.name,
            mode=mode,
            dry_run=dry_run,
            rows=[
                {
                    "row": row_no,
                    "data": {f.name: format_value(f, v) for f, v in zip(fields, values, strict=True)},
                }
                for row_no, values in rows
            ],
            timeout_seconds=self.timeout,
        )
        where = f"activity {self.activity!r} on task queue {self.owner_task_queue!r}"
        try:
            handle: WorkflowHandle[Any, Any]
            try:
                # A running batch (the previous attempt crashed while waiting) is joined, a failed
                # one runs again; only a completed one refuses the start and is read below.
                handle = await self.client.start_workflow(
                    SINK_BATCH_WORKFLOW_TYPE,
                    inp,
                    id=workflow_id,
                    task_queue=self.service_task_queue,
                    id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE_FAILED_ONLY,
                    id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
                )
            except WorkflowAlreadyStartedError:
                handle = self.client.get_workflow_handle(workflow_id)
            return await _result(handle)
        except WorkflowFailureError as err:
            cause = err.cause
            reason = cause.message if isinstance(cause, FailureError) else str(err)
            raise SinkUnavailable(f"{where}: {reason}", workflow_id=workflow_id) from None
        except RPCError as err:
            raise SinkUnavailable(f"{where}: Temporal refused batch {workflow_id}: {err.message}") from None

    def _rejections(self, answer: Any, rows: Sequence[tuple[int, tuple[Any, ...]]]) -> list[Rejection]:
        where = f"activity {self.activity!r} on task queue {self.owner_task_queue!r}"
        items = answer.get("results") if isinstance(answer, dict) else None
        if not isinstance(items, list):
            raise SinkRejected(f"{where} answered without a `results` list")
        results: dict[int, dict[str, Any]] = {}
        for item in items:
            row = item.get("row") if isinstance(item, dict) else None
            if not isinstance(item, dict) or isinstance(row, bool) or not isinstance(row, int):
                raise SinkRejected(f"{where} answered a malformed result {quoted(item)}")
            results[row] = item
        return per_row_rejections(where, rows, results)
