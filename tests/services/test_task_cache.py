"""GetTask through the Redis cache: read-through, never older than a committed write, optional."""

from __future__ import annotations

import asyncio
import json
import uuid

import pytest
from redis.asyncio import Redis
from temporalio.client import Client
from temporalio.worker import Worker

from common_operations.bootstrap import Runtime, open_runtime
from common_operations.config import Settings
from common_operations.domain.errors import RateLimited, TaskNotFound
from common_operations.domain.principal import Principal
from common_operations.domain.status import TaskStatus
from common_operations.domain.task import CreateTask, ProgressReport, Task
from common_operations.infra.task_cache import TaskCache
from tests.helpers import assert_eventually

# An admin: it reports progress on the tasks it creates.
ALICE = Principal("alice", frozenset({"admin"}))


@pytest.fixture
def settings(settings: Settings, redis_url: str) -> Settings:
    """The test's settings with the session's Redis."""
    settings.redis_url = redis_url
    return settings


def cache_of(runtime: Runtime) -> TaskCache:
    cache = runtime.tasks.cache
    assert cache is not None
    return cache


async def create(runtime: Runtime) -> Task:
    return await runtime.tasks.create_task(
        ALICE, CreateTask(task_type="process", entity_type="product", requested_by="")
    )


async def row_version(runtime: Runtime, task_id: uuid.UUID) -> int:
    found = await runtime.repository.get_versioned(task_id)
    assert found is not None
    return found[1]


async def test_every_update_of_a_task_row_raises_its_cache_version(runtime: Runtime) -> None:
    task = await create(runtime)
    before = await row_version(runtime, task.id)
    assert runtime.engine.pool is not None
    await runtime.engine.pool.execute("UPDATE tasks SET priority = priority WHERE id = $1", task.id)
    assert await row_version(runtime, task.id) == before + 1


async def test_a_second_get_is_served_from_redis_until_a_write(
    runtime: Runtime, worker: Worker, redis: Redis
) -> None:
    svc, cache = runtime.tasks, cache_of(runtime)
    task = await create(runtime)
    first = await svc.get_task(ALICE, task.id)
    key = cache.key(task.id)
    entry = await redis.hgetall(key)
    assert int(entry[b"v"]) == await row_version(runtime, task.id)
    assert json.loads(entry[b"s"])["id"] == str(task.id)

    # Mark the cached snapshot: the next GET shows the mark, so it came from Redis.
    marked = json.loads(entry[b"s"])
    marked["error_message"] = "served from the cache"
    await redis.hset(key, "s", json.dumps(marked))
    assert (await svc.get_task(ALICE, task.id)).error_message == "served from the cache"
    assert first.error_message is None

    # A write raises the floor: the marked snapshot is never served again.
    await svc.update_progress(ALICE, task.id, ProgressReport(total_records=10, processed_records=3))
    current = await assert_eventually(lambda: svc.get_task(ALICE, task.id), lambda t: t.counts.processed == 3)
    assert current.error_message is None and current.status is TaskStatus.PROCESSING


async def test_cache_is_never_stale_after_concurrent_writes_and_reads(
    runtime: Runtime, worker: Worker, redis: Redis
) -> None:
    svc, cache = runtime.tasks, cache_of(runtime)
    task = await create(runtime)
    writers, reports_each = 4, 8
    total = writers * reports_each
    await svc.update_progress(ALICE, task.id, ProgressReport(total_records=total, processed_records=0))
    stop = asyncio.Event()
    reads = 0

    async def reader() -> None:
        nonlocal reads
        while not stop.is_set():
            await svc.get_task(ALICE, task.id)
            reads += 1
            await asyncio.sleep(0)

    async def writer() -> None:
        for _ in range(reports_each):
            while True:
                try:
                    await svc.update_progress(
                        ALICE,
                        task.id,
                        ProgressReport(processed_records=1, success_records=1, increment=True),
                    )
                    break
                except RateLimited:
                    await asyncio.sleep(0.05)

    readers = [asyncio.create_task(reader()) for _ in range(6)]
    try:
        await asyncio.gather(*(writer() for _ in range(writers)))
        await svc.update_progress(ALICE, task.id, ProgressReport(is_completed=True))
        final = await assert_eventually(
            lambda: runtime.repository.get(task.id),
            lambda t: t is not None and t.status is TaskStatus.COMPLETED,
        )
    finally:
        stop.set()
        await asyncio.gather(*readers)
    assert reads > 0
    assert final is not None and final.counts.processed == total

    # Whatever the readers stored meanwhile, the entry is at the row's version (a floor or the
    # final snapshot), and a GET returns the final state.
    version = await row_version(runtime, task.id)
    assert int(await redis.hget(cache.key(task.id), "v") or 0) == version
    got = await svc.get_task(ALICE, task.id)
    assert got.status is TaskStatus.COMPLETED and got.counts.processed == total
    assert got == final
    assert int(await redis.hget(cache.key(task.id), "v") or 0) == version
    assert await redis.hexists(cache.key(task.id), "s")


async def test_a_slow_reader_cannot_store_the_snapshot_a_write_replaced(
    runtime: Runtime, worker: Worker
) -> None:
    svc, cache = runtime.tasks, cache_of(runtime)
    task = await create(runtime)
    await svc.get_task(ALICE, task.id)
    # The slow reader read the row ...
    found = await runtime.repository.get_versioned(task.id)
    assert found is not None
    old, old_version = found
    # ... then a write committed ...
    await svc.update_progress(ALICE, task.id, ProgressReport(total_records=5, processed_records=2))
    await assert_eventually(
        lambda: runtime.repository.get(task.id), lambda t: t is not None and t.counts.processed == 2
    )
    # ... and only then the reader tries to store what it read.
    assert not await cache.store(old, old_version)
    got = await svc.get_task(ALICE, task.id)
    assert got.counts.processed == 2 and got.status is TaskStatus.PROCESSING


async def test_a_deleted_task_is_not_brought_back_by_a_racing_reader(
    runtime: Runtime, worker: Worker
) -> None:
    svc, cache = runtime.tasks, cache_of(runtime)
    task = await create(runtime)
    await svc.update_progress(ALICE, task.id, ProgressReport(is_completed=True))
    await assert_eventually(lambda: svc.get_task(ALICE, task.id), lambda t: t.status is TaskStatus.COMPLETED)
    found = await runtime.repository.get_versioned(task.id)
    assert found is not None
    await svc.delete_task(ALICE, task.id)
    assert not await cache.store(*found)
    with pytest.raises(TaskNotFound):
        await svc.get_task(ALICE, task.id)


async def test_without_redis_get_task_serves_from_postgres_and_health_is_degraded(
    settings: Settings, client: Client
) -> None:
    settings.redis_url = "redis://127.0.0.1:1/0"  # nothing listens on port 1
    async with open_runtime(settings, client=client) as runtime:
        task = await create(runtime)
        for _ in range(3):
            got = await runtime.tasks.get_task(ALICE, task.id)
            assert got.id == task.id and got.status is TaskStatus.PENDING
        report = await runtime.tasks.health()
    assert report.healthy and report.degraded
    assert report.components["redis"].startswith("down: ")
