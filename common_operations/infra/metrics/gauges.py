"""The global gauges, refreshed from Postgres and Temporal every ``observability.gauge_interval``.

Gauges of the whole deployment (tasks in flight by type and status, stuck tasks, outbox lag) cannot
be kept by counting in one process: a task created by one API replica is finished by another
process's worker. Each process that serves metrics therefore reads the global figure itself (one
``GROUP BY`` on the mirror, served by the ``(status, task_type, created_at)`` index, one query of
the reconciler workflow and one of the outbox), so every replica reports the same value and
dashboards take ``max()`` across replicas.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Final

import asyncpg

from common_operations.db.outbox_repository import OutboxRepository
from common_operations.domain.errors import DomainError
from common_operations.infra.events.metrics import OUTBOX_LAG
from common_operations.infra.metrics import tasks as task_metrics
from common_operations.infra.metrics.temporal_sdk import drain_sdk_metrics
from common_operations.infra.temporal import TaskWorkflows

if TYPE_CHECKING:
    from common_operations.bootstrap import Runtime

log = logging.getLogger(__name__)

_IN_FLIGHT_SQL: Final = (
    "SELECT task_type, status, count(*) AS n FROM tasks WHERE status = ANY($1::text[]) "
    "GROUP BY task_type, status"
)
# The SDK's metric buffer is drained this often between scrapes, so that it never fills up.
_SDK_DRAIN_SECONDS: Final = 2.0


class GaugeRefresher:
    """Reads the global figures and sets the gauges; :meth:`run` does it periodically."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        workflows: TaskWorkflows | None,
        task_types: list[str],
        *,
        interval: float,
        outbox: bool = True,
    ) -> None:
        """Refresh from ``pool`` (the mirror) and ``workflows`` (the reconciler's last pass).

        Args:
            pool: the service database.
            workflows: the Temporal gateway; None leaves ``co_tasks_stuck`` to the reconciler.
            task_types: the configured task types (each gets its in-flight series, zero or not).
            interval: seconds between refreshes.
            outbox: also refresh the outbox lag (off when no outbox relay runs anywhere).
        """
        self._pool = pool
        self._workflows = workflows
        self._task_types = sorted(task_types)
        self._interval = interval
        self._outbox = OutboxRepository(pool) if outbox else None

    async def refresh(self) -> None:
        """Read every figure once and set the gauges (a part that fails keeps its last value).

        Raises:
            asyncpg.PostgresError / OSError: the mirror could not be read.
        """
        rows = await self._pool.fetch(_IN_FLIGHT_SQL, list(task_metrics.IN_FLIGHT_STATUSES))
        task_metrics.set_in_flight(
            {(r["task_type"], r["status"]): int(r["n"]) for r in rows}, self._task_types
        )
        if self._outbox is not None:
            OUTBOX_LAG.set(await self._outbox.lag_seconds())
        if self._workflows is not None:
            try:
                state = await self._workflows.reconciler_status()
            except DomainError as err:
                # No reconciler yet (no worker has started), or it is busy: keep the last value.
                log.debug("stuck-task gauge not refreshed: %s", err)
            else:
                if state.last is not None:
                    task_metrics.TASKS_STUCK.set(state.last.report.stuck)
        task_metrics.GAUGES_REFRESHED.set(time.time())

    async def run(self) -> None:
        """Refresh every ``interval`` seconds (and drain the SDK's metrics) until cancelled.

        A failed refresh is logged and tried again at the next interval: metrics never stop the
        service.
        """
        loop = asyncio.get_running_loop()
        next_refresh = loop.time()
        while True:
            if loop.time() >= next_refresh:
                next_refresh = loop.time() + self._interval
                try:
                    await self.refresh()
                except Exception as err:
                    # Whatever went wrong (the database away, a timeout), metrics never stop the
                    # service: the gauges keep their last values and the next interval tries again.
                    log.warning("metrics gauges not refreshed: %s: %s", type(err).__name__, err)
            drain_sdk_metrics()
            await asyncio.sleep(min(_SDK_DRAIN_SECONDS, max(0.0, next_refresh - loop.time())))


def refresher_for(runtime: Runtime) -> GaugeRefresher:
    """The refresher of a process running on ``runtime`` (its pool, gateway and settings)."""
    return GaugeRefresher(
        runtime.engine.pool,
        runtime.workflows,
        list(runtime.settings.operations.task_types),
        interval=runtime.settings.observability.gauge_interval,
        outbox=runtime.relay is not None,
    )
