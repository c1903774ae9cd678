"""``SinkBatch``: one batch of an import into a ``temporal`` sink, handed to the owning service.

The import activity cannot call the owner's activity itself (activities do not start activities),
so it starts this workflow on the service's own task queue, once per batch, under an id derived
from the job, chunk and part: a chunk sent again after a crash finds the batch's earlier run and
its result instead of applying the rows twice. The workflow runs the owner's activity on the
owner's task queue and returns its answer as it came; the import checks that every row has a
result.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError, FailureError

with workflow.unsafe.imports_passed_through():
    from common_operations.domain.workflow_types import SINK_BATCH_WORKFLOW_TYPE, SinkBatchInput

# The owner may be briefly away (a deploy, a restart): retry with backoff for some seconds, then
# fail the batch so the import's attempt fails with the owner's message and is retried itself.
BATCH_ATTEMPTS = 5
BATCH_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=0.5),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(seconds=10),
    maximum_attempts=BATCH_ATTEMPTS,
)
# The ApplicationError type of a batch whose owner's activity failed for good.
SINK_BATCH_FAILED_ERROR = "SINK_BATCH_FAILED"


def _reason(err: ActivityError) -> str:
    """The owner's own message (the activity's failure), not Temporal's wrapper around it."""
    cause = err.cause
    if isinstance(cause, FailureError) and cause.message:
        return cause.message
    return err.message or type(cause or err).__name__


@workflow.defn(name=SINK_BATCH_WORKFLOW_TYPE)
class SinkBatchWorkflow:
    """Runs the owner's activity on one batch of rows and returns its per-row results."""

    @workflow.run
    async def run(self, inp: SinkBatchInput) -> Any:
        """The owner's answer, ``{"results": [{"row", "ok", ...}]}``, undecoded.

        Raises:
            ApplicationError: the owner's activity failed on every attempt (or timed out).
        """
        request = {
            "entityType": inp.entity_type,
            "mode": inp.mode,
            "dryRun": inp.dry_run,
            "rows": inp.rows,
        }
        try:
            # No result type: a malformed answer must reach the import as data to report, not
            # fail this workflow's task on decoding (which Temporal would retry forever).
            return await workflow.execute_activity(
                inp.activity,
                request,
                task_queue=inp.task_queue,
                start_to_close_timeout=timedelta(seconds=inp.timeout_seconds),
                retry_policy=BATCH_RETRY,
            )
        except ActivityError as err:
            raise ApplicationError(
                f"activity {inp.activity!r} on task queue {inp.task_queue!r} failed: {_reason(err)}",
                type=SINK_BATCH_FAILED_ERROR,
                non_retryable=True,
            ) from err
