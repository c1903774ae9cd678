"""``RetentionJob``: what the retention Schedule starts, once per scheduled time.

It does nothing but create an ordinary ``retention`` task (one activity). The deleting is that
task's own workflow's work, so each run is a task like any other: listed, with events and logs,
cancellable, and recorded by the single writer of its state. The Schedule's overlap policy (skip)
only covers this short workflow; two retention tasks that overlap anyway are harmless, since each
tolerates tasks the other deleted.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy

with workflow.unsafe.imports_passed_through():
    from common_operations.domain.workflow_types import (
        RETENTION_JOB_WORKFLOW_TYPE,
        START_RETENTION_ACTIVITY,
    )

# Creating a task is one row and one workflow start; retry a while (Postgres or Temporal may be
# briefly away), then let the run fail so the Schedule's next time tries again.
START_TIMEOUT = timedelta(seconds=30)
START_RETRY = RetryPolicy(maximum_attempts=10, maximum_interval=timedelta(seconds=30))


@workflow.defn(name=RETENTION_JOB_WORKFLOW_TYPE)
class RetentionJob:
    """Creates this scheduled time's ``retention`` task."""

    @workflow.run
    async def run(self) -> str:
        """Create the task; its id (shown as the run's result in the Temporal UI)."""
        task_id: str = await workflow.execute_activity(
            START_RETENTION_ACTIVITY,
            start_to_close_timeout=START_TIMEOUT,
            retry_policy=START_RETRY,
            result_type=str,
        )
        workflow.logger.info("retention task %s created", task_id)
        return task_id
