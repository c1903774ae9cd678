"""Activities of an 'other service' that tests run on their own task queue (delegated handlers).

``echo_task`` completes at once; ``slow_task`` heartbeats until cancelled (recording that it saw
the cancellation); ``flaky_task`` fails on every attempt.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from temporalio import activity
from temporalio.client import Client
from temporalio.exceptions import ApplicationError
from temporalio.worker import Worker

from common_operations.domain.workflow_types import DelegatedTaskInput, DelegatedTaskResult


@dataclass
class DelegateProbe:
    """What the delegated activities observed."""

    started: list[str] = field(default_factory=list)
    heartbeats: int = 0
    cancelled: list[str] = field(default_factory=list)
    attempts: int = 0


class DelegateActivities:
    """Bound to a probe so a test can assert on what happened inside the activity."""

    def __init__(self, probe: DelegateProbe) -> None:
        self.probe = probe

    @activity.defn(name="echo_task")
    async def echo_task(self, inp: DelegatedTaskInput) -> DelegatedTaskResult:
        self.probe.started.append(inp.task_id)
        total = int(inp.params.get("records", 3))
        return DelegatedTaskResult(
            total_records=total,
            processed_records=total,
            success_records=total,
            failed_records=0,
            message=f"echoed {total} records",
        )

    @activity.defn(name="slow_task")
    async def slow_task(self, inp: DelegatedTaskInput) -> DelegatedTaskResult:
        self.probe.started.append(inp.task_id)
        try:
            while True:
                activity.heartbeat(self.probe.heartbeats)
                self.probe.heartbeats += 1
                await asyncio.sleep(0.2)
        except asyncio.CancelledError:
            self.probe.cancelled.append(inp.task_id)
            raise

    @activity.defn(name="flaky_task")
    async def flaky_task(self, inp: DelegatedTaskInput) -> DelegatedTaskResult:
        self.probe.attempts += 1
        raise ApplicationError(f"downstream catalog unavailable (attempt {activity.info().attempt})")


@asynccontextmanager
async def delegate_worker(client: Client, task_queue: str) -> AsyncIterator[DelegateProbe]:
    """Run the other service's worker on ``task_queue`` for the duration of the block."""
    probe = DelegateProbe()
    acts = DelegateActivities(probe)
    async with Worker(
        client,
        task_queue=task_queue,
        activities=[acts.echo_task, acts.slow_task, acts.flaky_task],
    ):
        yield probe
