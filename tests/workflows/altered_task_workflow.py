"""Deliberately changed copies of ``TaskWorkflow`` that prove the replay tests have teeth.

Both insert a one-second durable timer before anything else the workflow does (so before its first
mirror write), under the production workflow type name, as a careless edit would:

- :class:`UnpatchedExtraTimerWorkflow` inserts it unconditionally, which recorded histories must
  reject with a ``NondeterminismError``;
- :class:`PatchedExtraTimerWorkflow` inserts it behind ``workflow.patched``, the safe way: old
  histories (no patch marker) skip it and still replay.

Only the public ``run`` is overridden, so a refactoring of ``TaskWorkflow``'s internals cannot
quietly disarm the test. The workflow sandbox imports this module again for every run, so it does
nothing at import time beyond defining the classes.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from common_operations.domain.workflow_types import WORKFLOW_TYPE, ProgressSnapshot, TaskWorkflowInput
    from common_operations.workflows.task_workflow import TaskWorkflow

PATCH_ID = "replay-test-extra-timer"
EXTRA_TIMER = timedelta(seconds=1)


@workflow.defn(name=WORKFLOW_TYPE)
class UnpatchedExtraTimerWorkflow(TaskWorkflow):
    """``TaskWorkflow`` with a timer inserted before its first command, without a patch."""

    @workflow.run
    async def run(self, inp: TaskWorkflowInput) -> ProgressSnapshot:
        """The production run after an extra timer."""
        await workflow.sleep(EXTRA_TIMER)
        return await super().run(inp)


@workflow.defn(name=WORKFLOW_TYPE)
class PatchedExtraTimerWorkflow(TaskWorkflow):
    """The same change behind ``workflow.patched``: new runs take the timer, recorded ones skip it."""

    @workflow.run
    async def run(self, inp: TaskWorkflowInput) -> ProgressSnapshot:
        """The production run, after an extra timer in runs that have the patch."""
        if workflow.patched(PATCH_ID):
            await workflow.sleep(EXTRA_TIMER)
        return await super().run(inp)
