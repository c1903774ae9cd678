"""Building the runtime objects every entry point shares (API, gRPC, worker)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial

from piccolo.engine.postgres import PostgresEngine
from redis.asyncio import Redis
from temporalio.client import Client

from common_operations.activities.bulk import BulkContext
from common_operations.config import Settings
from common_operations.db import engine as db_engine
from common_operations.db.api_keys_repository import ApiKeysRepository
from common_operations.db.audit_repository import AuditLog
from common_operations.db.bulk_repository import BulkRepository
from common_operations.db.messages_repository import MessagesRepository
from common_operations.db.outbox_repository import OutboxRepository
from common_operations.db.repository import TaskRepository
from common_operations.db.settings_repository import SettingsRepository
from common_operations.domain.entities import EntitySpec
from common_operations.infra import cache, metrics, task_cache, temporal, temporal_ui
from common_operations.infra.entity_config import load_entities
from common_operations.infra.events import build_publisher
from common_operations.infra.metrics.temporal_sdk import install_sdk_metrics
from common_operations.infra.rate_limit import RateLimiter
from common_operations.infra.settings_schemas import load_setting_groups
from common_operations.infra.sinks.chunks import SinkRegistry
from common_operations.infra.storage import Storage, build_storage
from common_operations.infra.temporal import TaskWorkflows
from common_operations.infra.versioned_cache import VersionedCache
from common_operations.services.api_keys import ApiKeysService
from common_operations.services.bulk import BulkService
from common_operations.services.identity import Authenticator
from common_operations.services.limits import TaskLimits
from common_operations.services.messages import MessagesService
from common_operations.services.reconciler import Reconciler, reconciler_probes
from common_operations.services.relay import OutboxRelay
from common_operations.services.settings import SettingsService
from common_operations.services.tasks import TaskService
from common_operations.services.watch import TaskWatcher


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
    entities: dict[str, EntitySpec]
    bulk_jobs: BulkRepository
    sinks: SinkRegistry
    # Settings groups (configs/settings) and the messages catalogue.
    settings_groups: SettingsService
    messages: MessagesService
    # Who callers are (both transports), and the admin audit log.
    auth: Authenticator
    audit: AuditLog
    # API keys of services (admin use cases; the Authenticator looks keys up in the same table).
    api_keys: ApiKeysService
    # Optional: caches and the redis event backend use it; None when no redis_url is configured.
    redis: Redis | None = None
    # The outbox relay (events.backend); its sweeper runs in the worker, its fast path in the mirror.
    relay: OutboxRelay | None = None
    # Live task streams (SSE, gRPC WatchTask); connects (one LISTEN connection) with the first watch.
    watcher: TaskWatcher | None = None

    def reconciler(self) -> Reconciler:
        """A reconciler over this runtime's mirror and workflows."""
        return Reconciler(self.repository, self.workflows, self.settings.operations)

    def bulk_context(self) -> BulkContext:
        """What the bulk activities of a worker on this runtime work with."""
        return BulkContext(
            storage=self.storage,
            jobs=self.bulk_jobs,
            entities=self.entities,
            sinks=self.sinks,
            chunk_rows=self.settings.bulk.chunk_rows,
        )


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
    # Every task's workflowUrl, in whichever transport shows it.
    temporal_ui.configure(settings.temporal.ui_base_url, settings.temporal.namespace)
    # Task metrics label only the configured types (anything else is "other").
    metrics.configure(settings.operations.task_types)
    if client is None:
        if not settings.temporal.address:
            raise ValueError("temporal.address (TEMPORAL_ADDRESS) is not set")
        if settings.observability.temporal_metrics:
            # Before the client connects: a client (and its workers) keep the runtime they start with.
            install_sdk_metrics()
        client = await temporal.connect(settings.temporal.address, settings.temporal.namespace)
    engine = await db_engine.connect(
        settings.database.url, pool_min=settings.database.pool_min, pool_max=settings.database.pool_max
    )
    redis = cache.connect(settings.redis_url) if settings.redis_url else None
    # The caches share a client of their own: short timeouts and no retries, so that a slow or
    # missing Redis costs a cache miss, never a slow answer or a slow mirror write.
    cache_client = cache.connect_for_caches(settings.redis_url) if settings.redis_url else None
    tasks_cache = (
        task_cache.TaskCache(cache_client, ttl=settings.cache.task_ttl) if cache_client is not None else None
    )
    sinks: SinkRegistry | None = None
    relay: OutboxRelay | None = None
    watcher: TaskWatcher | None = None
    try:
        entities = load_entities(settings.bulk.entities_dir)
        storage = build_storage(settings)
        # Blocking (a bucket check on S3), so off the event loop.
        await asyncio.to_thread(storage.ensure_ready)
        repository = TaskRepository(engine, writes=tasks_cache)
        # One set of rate-limit buckets for every use case, shared by replicas through Redis on the
        # caches' short-timeout client: a slow or missing Redis means in-process buckets, never a
        # slow or failed request.
        limits = TaskLimits(settings.limits, limiter=RateLimiter(cache_client), tasks=repository)
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
        bulk_jobs = BulkRepository(engine.pool, writes=tasks_cache)
        sinks = SinkRegistry(
            settings.database.url,
            settings.bulk.databases,
            bulk_jobs,
            breaker_reset_after=settings.bulk.breaker_reset_after,
            client=client,
            task_queue=settings.temporal.task_queue,
        )
        bulk = BulkService(storage, settings.storage, entities)
        # Built here so a misconfigured backend (redis without a URL) fails at start.
        publisher = build_publisher(settings.events, redis_url=settings.redis_url, redis=redis)
        relay = OutboxRelay(OutboxRepository(engine.pool), repository, publisher, settings.events)
        audit = AuditLog(engine.pool)
        api_keys = ApiKeysRepository(engine.pool)
        watcher = TaskWatcher(repository, engine.pool, settings.database.url)
        yield Runtime(
            settings=settings,
            engine=engine,
            client=client,
            repository=repository,
            workflows=workflows,
            tasks=TaskService(
                repository,
                workflows,
                settings.operations,
                optional_probes=probes,
                bulk=bulk,
                cache=tasks_cache,
                webhooks=settings.webhooks,
                audit=audit,
                limits=limits,
            ),
            storage=storage,
            entities=entities,
            bulk_jobs=bulk_jobs,
            sinks=sinks,
            settings_groups=SettingsService(
                SettingsRepository(engine.pool),
                load_setting_groups(settings.settings_groups.schemas_dir),
                VersionedCache(cache_client, "co:settings:", settings.cache.settings_ttl),
                limits=limits,
            ),
            messages=MessagesService(
                MessagesRepository(engine.pool),
                VersionedCache(cache_client, "co:messages:", settings.cache.messages_ttl),
                limits=limits,
            ),
            auth=Authenticator(settings.auth, api_keys),
            audit=audit,
            api_keys=ApiKeysService(api_keys),
            redis=redis,
            relay=relay,
            watcher=watcher,
        )
    finally:
        if watcher is not None:
            await watcher.close()
        if relay is not None:
            await relay.close()
        if sinks is not None:
            await sinks.close()
        await engine.close_connection_pool()
        if redis is not None:
            await redis.aclose()
        if cache_client is not None:
            await cache_client.aclose()
