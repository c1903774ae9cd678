"""A ``TaskWorkflow`` whose workflow task always fails (a code bug), for the stuck-run tests.

Its own module with no imports beyond temporalio: the workflow sandbox re-imports it.
"""

from __future__ import annotations

from typing import Any

from temporalio import workflow


@workflow.defn(name="TaskWorkflow")
class BrokenTaskWorkflow:
    """Fails every workflow task: not a Temporal failure, so the task is retried forever."""

    @workflow.run
    async def run(self, inp: Any) -> None:
        raise RuntimeError("a bug in the deployed workflow code")
