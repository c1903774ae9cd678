"""The reconciler's pass as an activity of the ``TaskReconciler`` workflow."""

from __future__ import annotations

from temporalio import activity

from common_operations.domain.workflow_types import (
    RECONCILE_ACTIVITY,
    ReconcilePassInput,
    ReconcilePassResult,
)
from common_operations.services.reconciler import Reconciler


class ReconcileActivities:
    """Activities bound to a reconciler (constructor injection)."""

    def __init__(self, reconciler: Reconciler) -> None:
        """Run passes of ``reconciler``."""
        self._reconciler = reconciler

    @activity.defn(name=RECONCILE_ACTIVITY)
    async def reconcile_tasks(self, inp: ReconcilePassInput) -> ReconcilePassResult:
        """One reconciler pass over the runs that closed since ``inp.since``."""
        return await self._reconciler.run_once(inp.since)
