"""The Temporal worker: ``TaskWorkflow``, the mirror activity, and the reconciler loop."""

from __future__ import annotations

import asyncio

from temporalio.worker import Worker

from common_operations.activities.mirror import MirrorActivities
from common_operations.bootstrap import Runtime
from common_operations.workflows.task_workflow import TaskWorkflow


def build_worker(runtime: Runtime, *, task_queue: str | None = None) -> Worker:
    """A worker for the service's task queue (or ``task_queue``), not yet running."""
    mirror = MirrorActivities(runtime.repository)
    return Worker(
        runtime.client,
        task_queue=task_queue or runtime.settings.temporal.task_queue,
        workflows=[TaskWorkflow],
        activities=[mirror.mirror_task_state],
        max_concurrent_activities=200,
        max_concurrent_local_activities=200,
    )


async def run_worker(runtime: Runtime) -> None:
    """Run the worker and the reconciler until cancelled."""
    worker = build_worker(runtime)
    reconciler = asyncio.create_task(runtime.reconciler().run_forever(), name="reconciler")
    try:
        await worker.run()
    finally:
        reconciler.cancel()
        await asyncio.gather(reconciler, return_exceptions=True)
