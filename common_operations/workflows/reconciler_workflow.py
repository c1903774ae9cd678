"""``TaskReconciler``: the one reconciler of a task queue, as a workflow.

Every worker makes sure it runs (``id_conflict_policy=USE_EXISTING``), so exactly one instance
exists however many workers there are, and its passes run as activities on whichever worker is
free: a worker that dies mid-pass only delays the next one. The watermark of closed runs lives in
the workflow, so no run that closed while all workers were down is missed. Operators see it in the
Web UI, and its ``status`` query answers the last pass's report (``/health/detailed`` shows it).
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError

with workflow.unsafe.imports_passed_through():
    from common_operations.domain.workflow_types import (
        RECONCILE_ACTIVITY,
        RECONCILER_STATUS_QUERY,
        RECONCILER_WORKFLOW_TYPE,
        ReconcilePassInput,
        ReconcilePassResult,
        ReconcilerState,
    )

# A pass is a handful of events; continuing as new every so often keeps the history short.
PASSES_PER_RUN = 100
PASS_TIMEOUT = timedelta(minutes=10)


@workflow.defn(name=RECONCILER_WORKFLOW_TYPE)
class ReconcilerWorkflow:
    """Runs a reconciler pass every ``interval_seconds``, forever."""

    @workflow.init
    def __init__(self, state: ReconcilerState) -> None:
        """Start from the state the previous run (or the starting worker) handed over."""
        self._state = state

    @workflow.run
    async def run(self, state: ReconcilerState) -> None:
        """Pass, sleep, repeat; continue as new after :data:`PASSES_PER_RUN` passes."""
        for _ in range(PASSES_PER_RUN):
            since = self._state.since or workflow.now() - timedelta(hours=24)
            try:
                result: ReconcilePassResult = await workflow.execute_activity(
                    RECONCILE_ACTIVITY,
                    ReconcilePassInput(since=since),
                    start_to_close_timeout=PASS_TIMEOUT,
                    # The next pass is the retry: a failed pass is repeated in full from the same
                    # watermark, never skipped.
                    retry_policy=RetryPolicy(maximum_attempts=1),
                    result_type=ReconcilePassResult,
                )
            except ActivityError as err:
                self._state.last_error = str(err.cause or err)
            else:
                self._state.last, self._state.since, self._state.last_error = result, result.next_since, None
                self._state.passes += 1
            await workflow.sleep(timedelta(seconds=self._state.interval_seconds))
        workflow.continue_as_new(self._state)

    @workflow.query(name=RECONCILER_STATUS_QUERY)
    def status(self) -> ReconcilerState:
        """Passes so far, the last pass's report and watermark, and the last error if any."""
        return self._state
