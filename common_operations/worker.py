"""The Temporal worker: ``TaskWorkflow``, the mirror activity, and the one reconciler of the queue."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import timedelta

from temporalio.common import WorkflowIDConflictPolicy, WorkflowIDReusePolicy
from temporalio.service import RPCError
from temporalio.worker import Worker
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner, SandboxRestrictions

from common_operations.activities.bulk import BulkActivities
from common_operations.activities.bulk_actions import BulkActionActivities
from common_operations.activities.mirror import MirrorActivities
from common_operations.activities.reconcile import ReconcileActivities
from common_operations.activities.retention import RetentionActivities
from common_operations.activities.webhooks import WebhookActivities
from common_operations.bootstrap import Runtime
from common_operations.db.webhook_repository import WebhookRepository
from common_operations.domain.workflow_types import ReconcilerState, reconciler_workflow_id
from common_operations.services.retention import ensure_retention_schedule
from common_operations.workflows.reconciler_workflow import ReconcilerWorkflow
from common_operations.workflows.retention_workflow import RetentionJob
from common_operations.workflows.sink_batch_workflow import SinkBatchWorkflow
from common_operations.workflows.task_workflow import TaskWorkflow
from common_operations.workflows.webhook_workflow import TaskWebhookWorkflow

log = logging.getLogger(__name__)

# The package's modules are deterministic and have no import side effects, so the sandbox may share
# them instead of importing them again for every workflow run (a tenth of a task's CPU was spent
# re-importing task_workflow.py, bench/README.md). The sandbox still guards the standard library.
# opentelemetry too: the tracing interceptor's workflow side must see the process's one OTel context
# and tracer provider, not copies re-imported into each sandbox.
WORKFLOW_RUNNER = SandboxedWorkflowRunner(
    restrictions=SandboxRestrictions.default.with_passthrough_modules("common_operations", "opentelemetry")
)

# How often each worker makes sure the reconciler workflow still runs (an operator may terminate it).
_RECONCILER_CHECK_SECONDS = 60.0


def build_worker(runtime: Runtime, *, task_queue: str | None = None) -> Worker:
    """A worker for the service's task queue (or ``task_queue``), not yet running."""
    mirror = MirrorActivities(runtime.repository, runtime.relay)
    reconcile = ReconcileActivities(runtime.reconciler())
    bulk = BulkActivities(runtime.bulk_context())
    retention = RetentionActivities(
        runtime.tasks, runtime.bulk_jobs, default_days=runtime.settings.bulk.retention_days
    )
    bulk_actions = BulkActionActivities(runtime.tasks, runtime.bulk_jobs)
    webhooks = WebhookActivities(
        runtime.repository, WebhookRepository(runtime.engine.pool), runtime.settings.webhooks
    )
    return Worker(
        runtime.client,
        task_queue=task_queue or runtime.settings.temporal.task_queue,
        workflows=[TaskWorkflow, ReconcilerWorkflow, RetentionJob, SinkBatchWorkflow, TaskWebhookWorkflow],
        activities=[
            mirror.mirror_task_state,
            reconcile.reconcile_tasks,
            bulk.await_upload,
            bulk.run_import,
            bulk.run_export,
            retention.start_retention_task,
            retention.run_retention,
            bulk_actions.run_bulk_action,
            webhooks.webhook_policy,
            webhooks.send_webhook,
        ],
        workflow_runner=WORKFLOW_RUNNER,
        max_concurrent_activities=200,
        max_concurrent_local_activities=200,
        # A bulk job learns of its cancellation from the answer to a heartbeat; the SDK otherwise
        # sends them only every 0.8 x heartbeat timeout, and a cancel must stop a job in seconds.
        max_heartbeat_throttle_interval=timedelta(seconds=2),
    )


async def ensure_reconciler(runtime: Runtime) -> None:
    """Start the task queue's reconciler workflow unless it already runs (one for all workers)."""
    queue = runtime.settings.temporal.task_queue
    await runtime.client.start_workflow(
        ReconcilerWorkflow.run,
        ReconcilerState(interval_seconds=runtime.settings.operations.reconcile_interval),
        id=reconciler_workflow_id(queue),
        task_queue=queue,
        id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
        id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE,
        static_summary=f"Reconciler of task queue {queue}",
        static_details="Repairs tasks whose runs closed unrecorded, never started, or keep failing; "
        "query `status` for its last pass.",
    )


async def _keep_reconciler(runtime: Runtime) -> None:
    while True:
        try:
            await ensure_reconciler(runtime)
        except RPCError as err:
            log.warning("could not make sure the reconciler workflow runs: %s", err)
        await asyncio.sleep(_RECONCILER_CHECK_SECONDS)


async def run_worker(runtime: Runtime) -> None:
    """Run the worker until cancelled, keeping the reconciler workflow alive.

    The sink databases and tables of the declared entities are created first (idempotent), so a new
    installation can import into ``products`` at once.
    """
    await runtime.sinks.ensure_tables(runtime.entities)
    worker = build_worker(runtime)
    try:
        # Once per start: the Schedule lives in Temporal, so unlike the reconciler it needs no
        # keeper; a worker started with a new cron brings it up to date.
        await ensure_retention_schedule(runtime)
    except RPCError as err:
        log.warning("could not make sure the retention schedule exists: %s", err)
    keeper = asyncio.create_task(_keep_reconciler(runtime), name="reconciler-keeper")
    # Every worker sweeps the outbox; per-stream leases keep each stream with one relay at a time.
    sweeper = asyncio.create_task(runtime.relay.run(), name="outbox-sweeper") if runtime.relay else None
    try:
        await worker.run()
    finally:
        for background in (keeper, sweeper):
            if background is not None:
                background.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await background
