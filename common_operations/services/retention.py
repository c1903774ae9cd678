"""The retention Schedule: one per task queue, created (or brought up to date) by every worker.

The Schedule starts ``RetentionJob`` at the times of ``bulk.retention_schedule`` (cron, UTC); that
workflow creates a ``retention`` task, which deletes final tasks older than ``bulk.retention_days``.
Operators see it with ``temporal schedule list`` / ``describe`` and may pause or trigger it there.
"""

from __future__ import annotations

import logging
from typing import Any

from temporalio.client import (
    Client,
    Schedule,
    ScheduleActionStartWorkflow,
    ScheduleAlreadyRunningError,
    ScheduleHandle,
    ScheduleOverlapPolicy,
    SchedulePolicy,
    ScheduleSpec,
    ScheduleUpdate,
    ScheduleUpdateInput,
)

from common_operations.bootstrap import Runtime
from common_operations.domain.workflow_types import RETENTION_JOB_WORKFLOW_TYPE, retention_schedule_id

log = logging.getLogger(__name__)

# The server turns a cron string into calendar specs and does not return the string, so the cron
# the Schedule was made from is kept in its action's memo, to tell whether the configuration changed.
CRON_MEMO = "retentionSchedule"


def _action(task_queue: str, cron: str) -> ScheduleActionStartWorkflow:
    return ScheduleActionStartWorkflow(
        RETENTION_JOB_WORKFLOW_TYPE,
        id=retention_schedule_id(task_queue),
        task_queue=task_queue,
        memo={CRON_MEMO: cron},
        static_summary="retention job: creates a retention task",
    )


def _schedule(task_queue: str, cron: str) -> Schedule:
    return Schedule(
        action=_action(task_queue, cron),
        spec=ScheduleSpec(cron_expressions=[cron]),
        # A run still going at the next time is simply not doubled.
        policy=SchedulePolicy(overlap=ScheduleOverlapPolicy.SKIP),
    )


def _memo_cron(client: Client, action: Any) -> str | None:
    memo = getattr(action, "memo", None) or {}
    payload = memo.get(CRON_MEMO)
    if payload is None:
        return None
    value = client.data_converter.payload_converter.from_payload(payload, str)
    return value if isinstance(value, str) else None


async def ensure_retention_schedule(runtime: Runtime) -> ScheduleHandle:
    """Create the task queue's retention Schedule, or update its cron if the configuration changed.

    Idempotent and safe from any number of workers at once: creation is refused for all but one
    (``ScheduleAlreadyRunningError``), and an update is a compare-and-set the client retries. An
    existing Schedule keeps its state (an operator's pause stays).

    Raises:
        RPCError: Temporal refused or could not be reached (the caller logs and carries on).
    """
    client = runtime.client
    queue = runtime.settings.temporal.task_queue
    cron = runtime.settings.bulk.retention_schedule
    schedule_id = retention_schedule_id(queue)
    try:
        return await client.create_schedule(schedule_id, _schedule(queue, cron))
    except ScheduleAlreadyRunningError:
        pass
    handle = client.get_schedule_handle(schedule_id)

    def updater(current: ScheduleUpdateInput) -> ScheduleUpdate | None:
        existing = current.description.schedule
        if _memo_cron(client, existing.action) == cron:
            return None
        log.info("retention schedule %s: cron changed to %r", schedule_id, cron)
        fresh = _schedule(queue, cron)
        return ScheduleUpdate(
            schedule=Schedule(action=fresh.action, spec=fresh.spec, policy=fresh.policy, state=existing.state)
        )

    await handle.update(updater)
    return handle
