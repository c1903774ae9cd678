"""The mirror activity: writes a workflow's state change to Postgres."""

from __future__ import annotations

from temporalio import activity

from common_operations.db.repository import TaskRepository
from common_operations.domain.workflow_types import MIRROR_ACTIVITY, MirrorWrite


class MirrorActivities:
    """Activities bound to the task repository (constructor injection)."""

    def __init__(self, repository: TaskRepository) -> None:
        """Write through ``repository``."""
        self._repository = repository

    @activity.defn(name=MIRROR_ACTIVITY)
    async def mirror_task_state(self, write: MirrorWrite) -> bool:
        """Apply ``write`` if it is newer than the row; idempotent under retries.

        Returns:
            Whether the task row changed (False for a stale or repeated write).
        """
        return await self._repository.apply(write)
