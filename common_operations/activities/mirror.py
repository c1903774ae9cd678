"""The mirror activity: writes a workflow's state change to Postgres."""

from __future__ import annotations

from temporalio import activity

from common_operations.db.repository import TaskRepository
from common_operations.domain.workflow_types import MIRROR_ACTIVITY, MirrorOutcome, MirrorWrite


class MirrorActivities:
    """Activities bound to the task repository (constructor injection)."""

    def __init__(self, repository: TaskRepository) -> None:
        """Write through ``repository``."""
        self._repository = repository

    @activity.defn(name=MIRROR_ACTIVITY)
    async def mirror_task_state(self, write: MirrorWrite) -> MirrorOutcome:
        """Apply a run's ``write`` (fenced by its owner token); idempotent under retries.

        Returns:
            ``applied``, ``duplicate`` (an earlier attempt applied it) or ``fenced`` (another run
            owns the task, or it was deleted: the run must stop).
        """
        return await self._repository.apply(write)
