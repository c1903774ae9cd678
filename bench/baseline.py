"""Workflows and activities of the benchmarks' baselines (own module: the sandbox re-imports it).

- ``BenchBaselineWorkflow`` + ``bench_baseline_noop``: the bare Temporal baseline of
  ``bench.lifecycle``, one trivial workflow running one no-op activity.
- ``bench_noop_task``: the delegated activity of the service's ``bench_noop`` task type, served on
  the "other service's" task queue; it returns at once.
- ``BenchCounterWorkflow``: the bare Temporal baseline of ``bench.progress`` (its synchronous
  ``increment`` Update adds one to a counter and returns it) and of ``bench.create`` (a started run
  that just waits, as an external task's run does); it ends on the ``finish`` signal.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import activity, workflow

with workflow.unsafe.imports_passed_through():
    from common_operations.domain.workflow_types import DelegatedTaskInput, DelegatedTaskResult

BASELINE_WORKFLOW = "BenchBaselineWorkflow"
COUNTER_WORKFLOW = "BenchCounterWorkflow"
INCREMENT_UPDATE = "increment"
FINISH_SIGNAL = "finish"
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


@workflow.defn(name=COUNTER_WORKFLOW)
class CounterWorkflow:
    """Waits until ``finish``; the ``increment`` Update counts (nothing else, no activity, no timer)."""

    def __init__(self) -> None:
        """Nothing counted yet."""
        self._count = 0
        self._finished = False

    @workflow.run
    async def run(self) -> int:
        """Wait for ``finish`` (and for running Updates), then return the count."""
        await workflow.wait_condition(lambda: self._finished)
        await workflow.wait_condition(workflow.all_handlers_finished)
        return self._count

    @workflow.update(name=INCREMENT_UPDATE)
    def increment(self, value: int) -> int:
        """Add one to the counter and return it (``value``, the caller's report number, is unused)."""
        self._count += 1
        return self._count

    @workflow.signal(name=FINISH_SIGNAL)
    def finish(self) -> None:
        """End the run."""
        self._finished = True
