"""Workflows and activities of the lifecycle benchmark (own module: the sandbox re-imports it).

- ``BenchBaselineWorkflow`` + ``bench_baseline_noop``: the bare Temporal baseline, one trivial
  workflow running one no-op activity.
- ``bench_noop_task``: the delegated activity of the service's ``bench_noop`` task type, served on
  the "other service's" task queue; it returns at once.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import activity, workflow

with workflow.unsafe.imports_passed_through():
    from common_operations.domain.workflow_types import DelegatedTaskInput, DelegatedTaskResult

BASELINE_WORKFLOW = "BenchBaselineWorkflow"
NOOP_ACTIVITY = "bench_noop_task"


@activity.defn(name="bench_baseline_noop")
async def baseline_noop(item: str) -> str:
    """Return the item: no work at all."""
    return item


@activity.defn(name=NOOP_ACTIVITY)
async def noop_task(inp: DelegatedTaskInput) -> DelegatedTaskResult:
    """The delegated handler of the benchmark's task type: completes at once."""
    return DelegatedTaskResult(message="no-op")


@workflow.defn(name=BASELINE_WORKFLOW)
class BaselineWorkflow:
    """One no-op activity, then done."""

    @workflow.run
    async def run(self, item: str) -> str:
        """Run the activity with a plain timeout and return its result."""
        result: str = await workflow.execute_activity(
            baseline_noop, item, start_to_close_timeout=timedelta(seconds=30)
        )
        return result
