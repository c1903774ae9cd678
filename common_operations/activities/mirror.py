"""The mirror activity: writes a workflow's state change to Postgres."""

from __future__ import annotations

from temporalio import activity

from common_operations.db.repository import TaskRepository
from common_operations.domain.workflow_types import MIRROR_ACTIVITY, MirrorOutcome, MirrorWrite
from common_operations.services.relay import OutboxRelay


class MirrorActivities:
    """Activities bound to the task repository (constructor injection)."""

    def __init__(self, repository: TaskRepository, relay: OutboxRelay | None = None) -> None:
        """Write through ``repository``; hand each applied transition's events to ``relay``."""
        self._repository = repository
        self._relay = relay

    @activity.defn(name=MIRROR_ACTIVITY)
    async def mirror_task_state(self, write: MirrorWrite) -> MirrorOutcome:
        """Apply a run's ``write`` (fenced by its owner token); idempotent under retries.

        Returns:
            ``applied``, ``duplicate`` (an earlier attempt applied it) or ``fenced`` (another run
            owns the task, or it was deleted: the run must stop).
        """
        outcome = await self._repository.apply(write)
        if outcome is MirrorOutcome.APPLIED and self._relay is not None:
            # The event row is committed: publish it now rather than at the next sweep. In the
            # background, so neither a slow nor a failing broker touches the workflow.
            self._relay.notify(write.task_id)
        return outcome
