"""Building the runtime objects every entry point shares (API, gRPC, worker)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial

from piccolo.engine.postgres import PostgresEngine
from temporalio.client import Client

from common_operations.config import Settings
from common_operations.db import engine as db_engine
from common_operations.db.repository import TaskRepository
from common_operations.infra import cache, temporal
from common_operations.infra.storage import Storage, build_storage
from common_operations.infra.temporal import TaskWorkflows
from common_operations.services.reconciler import Reconciler, reconciler_probes
from common_operations.services.tasks import TaskService


@dataclass(slots=True)
class Runtime:
    """Connected clients and the services built on them."""

    settings: Settings
    engine: PostgresEngine
    client: Client
    repository: TaskRepository
    workflows: TaskWorkflows
    tasks: TaskService
    storage: Storage

    def reconciler(self) -> Reconciler:
        """A reconciler over this runtime's mirror and workflows."""
        return Reconciler(self.repository, self.workflows, self.settings.operations)


@asynccontextmanager
async def open_runtime(
    settings: Settings, *, client: Client | None = None, with_worker: bool = False
) -> AsyncIterator[Runtime]:
    """Connect to Postgres and Temporal and build the services; close the pool on exit.

    Args:
        settings: where the backing services are (their addresses must be set).
        client: an already connected Temporal client to reuse (tests).
        with_worker: a worker on this runtime's client runs in this process, so new runs may be
            started eagerly on it (``temporal.eager_start``).
    """
    if not settings.database.url:
        raise ValueError("database.url (DATABASE_URL) is not set")
    if client is None:
        if not settings.temporal.address:
            raise ValueError("temporal.address (TEMPORAL_ADDRESS) is not set")
        client = await temporal.connect(settings.temporal.address, settings.temporal.namespace)
    engine = await db_engine.connect(
        settings.database.url, pool_min=settings.database.pool_min, pool_max=settings.database.pool_max
    )
    redis = cache.connect(settings.redis_url) if settings.redis_url else None
    try:
        storage = build_storage(settings)
        # Blocking (a bucket check on S3), so off the event loop.
        await asyncio.to_thread(storage.ensure_ready)
        repository = TaskRepository(engine)
        ops = settings.operations
        workflows = TaskWorkflows(
            client,
            settings.temporal.task_queue,
            search_attributes=settings.temporal.search_attributes,
            eager_start=with_worker and settings.temporal.eager_start,
            max_in_flight_reports=ops.max_in_flight_reports,
            report_queue_timeout=ops.report_queue_timeout,
        )
        probes = reconciler_probes(workflows, ops)
        if redis is not None:
            probes["redis"] = partial(cache.ping, redis)
        yield Runtime(
            settings=settings,
            engine=engine,
            client=client,
            repository=repository,
            workflows=workflows,
            tasks=TaskService(repository, workflows, settings.operations, optional_probes=probes),
            storage=storage,
        )
    finally:
        await engine.close_connection_pool()
        if redis is not None:
            await redis.aclose()
