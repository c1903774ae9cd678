"""TaskWatcher against real Postgres and Temporal: snapshots, the end, resume, coalescing, fan-out.

The watcher learns of changes by Postgres notifications and by a batched version check; tests that
build their own watcher switch one of the two off, so each path is shown to work on its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncGenerator, Callable
from datetime import UTC, datetime

import asyncpg
import pytest
from temporalio.worker import Worker

from common_operations.bootstrap import Runtime
from common_operations.db.task_changes import parse_change
from common_operations.domain.errors import ServiceUnavailable, TaskNotFound, ValidationFailed
from common_operations.domain.principal import Principal
from common_operations.domain.status import TaskStatus
from common_operations.domain.task import CreateTask, ProgressReport, Task
from common_operations.services.watch import TaskUpdate, TaskWatcher, ends_stream, parse_after_seq

ADMIN = Principal("watch-admin", frozenset({"admin"}))
STRANGER = Principal("watch-stranger", frozenset())
STEP = 20.0  # seconds any one expected snapshot may take to arrive (a hang guard, not a speed test)

Stream = AsyncGenerator[TaskUpdate | None, None]


async def create(runtime: Runtime, owner: str = "watch-owner") -> Task:
    return await runtime.tasks.create_task(
        ADMIN, CreateTask(task_type="process", entity_type="product", requested_by=owner)
    )


async def report(runtime: Runtime, task_id: uuid.UUID, **fields: object) -> None:
    await runtime.tasks.update_progress(ADMIN, task_id, ProgressReport(**fields))  # type: ignore[arg-type]


async def next_update(stream: Stream) -> TaskUpdate:
    """The stream's next snapshot (keep-alives skipped)."""
    while True:
        update = await asyncio.wait_for(anext(stream), STEP)
        if update is not None:
            return update


async def until(stream: Stream, done: Callable[[TaskUpdate], bool]) -> list[TaskUpdate]:
    """Snapshots until one satisfies ``done`` (a predicate on TaskUpdate), that one included."""
    seen = []
    while True:
        update = await next_update(stream)
        seen.append(update)
        if done(update):
            return seen


async def ended(stream: Stream) -> None:
    with pytest.raises(StopAsyncIteration):
        await asyncio.wait_for(anext(stream), STEP)


@pytest.fixture
async def db(database_url: str) -> AsyncGenerator[asyncpg.Connection, None]:
    conn = await asyncpg.connect(database_url)
    yield conn
    await conn.close()


# --- pure rules ------------------------------------------------------------------------------------


def _task(status: TaskStatus, next_retry_at: datetime | None = None) -> Task:
    now = datetime.now(UTC)
    return Task(
        id=uuid.uuid4(),
        task_type="process",
        entity_type="",
        status=status,
        priority=0,
        requested_by="x",
        params={},
        created_at=now,
        updated_at=now,
        next_retry_at=next_retry_at,
    )


def test_which_states_end_a_stream() -> None:
    assert ends_stream(_task(TaskStatus.COMPLETED))
    assert ends_stream(_task(TaskStatus.CANCELLED))
    assert ends_stream(_task(TaskStatus.FAILED))
    # An automatic retry is coming: the stream follows it.
    assert not ends_stream(_task(TaskStatus.FAILED, datetime.now(UTC)))
    for status in (TaskStatus.PENDING, TaskStatus.SCHEDULED, TaskStatus.PROCESSING):
        assert not ends_stream(_task(status))


def test_resume_tokens() -> None:
    assert parse_after_seq(None) is None
    assert parse_after_seq("") is None
    assert parse_after_seq("0") is None
    assert parse_after_seq(" 7 ") == 7
    assert parse_after_seq(12) == 12
    for bad in ("abc", "-1", "1.5", str(2**63)):
        with pytest.raises(ValidationFailed):
            parse_after_seq(bad)


def test_notification_payloads() -> None:
    task_id = uuid.uuid4()
    change = parse_change(f"{task_id} 42")
    assert change is not None and change.task_id == task_id and change.version == 42
    deleted = parse_change(f"{task_id} deleted")
    assert deleted is not None and deleted.version is None
    assert parse_change("nonsense") is None
    assert parse_change(f"{task_id} x") is None


# --- through the runtime's watcher ------------------------------------------------------------------


async def test_snapshots_follow_progress_and_end_with_the_final_state(
    runtime: Runtime, worker: Worker
) -> None:
    task = await create(runtime)
    assert runtime.watcher is not None
    stream = await runtime.watcher.watch(runtime.tasks, ADMIN, task.id)
    async with contextlib.aclosing(stream):
        first = await next_update(stream)
        assert first.task.id == task.id and first.seq >= 1 and not first.final

        await report(runtime, task.id, total_records=10, processed_records=3)
        seen = await until(stream, lambda u: u.task.counts.processed == 3)
        assert seen[-1].task.status is TaskStatus.PROCESSING and not seen[-1].final

        await report(runtime, task.id, processed_records=7)
        seen += await until(stream, lambda u: u.task.counts.processed == 7)

        await report(runtime, task.id, processed_records=10, success_records=10, is_completed=True)
        seen += await until(stream, lambda u: u.final)
        last = seen[-1]
        assert last.task.status is TaskStatus.COMPLETED and last.task.progress_percentage == 100.0
        seqs = [first.seq] + [u.seq for u in seen]
        assert seqs == sorted(set(seqs)), "seq strictly increases"
        await ended(stream)
    assert runtime.watcher.watched == 0


async def test_resume_sends_only_newer_snapshots_and_always_the_end(runtime: Runtime, worker: Worker) -> None:
    task = await create(runtime)
    assert runtime.watcher is not None
    async with contextlib.aclosing(await runtime.watcher.watch(runtime.tasks, ADMIN, task.id)) as stream:
        first = await next_update(stream)

    # Nothing newer than what the caller has: nothing is sent until the task changes.
    resumed = await runtime.watcher.watch(runtime.tasks, ADMIN, task.id, after_seq=first.seq)
    async with contextlib.aclosing(resumed):
        pending = asyncio.ensure_future(next_update(resumed))
        await asyncio.sleep(0.5)
        assert not pending.done()
        await report(runtime, task.id, total_records=4, processed_records=1)
        newer = await pending
        assert newer.seq > first.seq and newer.task.counts.total == 4

    await report(runtime, task.id, processed_records=4, success_records=4, is_completed=True)
    async with contextlib.aclosing(await runtime.watcher.watch(runtime.tasks, ADMIN, task.id)) as stream:
        end = (await until(stream, lambda u: u.final))[-1]

    # Resumed at (or past) the final snapshot: the end is sent again, and the stream closes.
    for after in (end.seq, end.seq + 100):
        again = await runtime.watcher.watch(runtime.tasks, ADMIN, task.id, after_seq=after)
        async with contextlib.aclosing(again):
            update = await next_update(again)
            assert update.final and update.seq == end.seq
            await ended(again)


async def test_a_resume_token_beyond_the_task_starts_over_with_the_current_snapshot(
    runtime: Runtime, worker: Worker
) -> None:
    task = await create(runtime)
    assert runtime.watcher is not None
    async with contextlib.aclosing(await runtime.watcher.watch(runtime.tasks, ADMIN, task.id)) as stream:
        current = await next_update(stream)
    # Never sent for this task (another task's id, or made up): waiting for it could last forever.
    resumed = await runtime.watcher.watch(runtime.tasks, ADMIN, task.id, after_seq=current.seq + 1000)
    async with contextlib.aclosing(resumed):
        update = await asyncio.wait_for(next_update(resumed), 10)
        assert update.seq == current.seq and not update.final


async def test_hidden_and_missing_tasks_are_not_found_before_anything_is_sent(
    runtime: Runtime, worker: Worker
) -> None:
    task = await create(runtime, owner="someone-else")
    assert runtime.watcher is not None
    with pytest.raises(TaskNotFound) as hidden:
        await runtime.watcher.watch(runtime.tasks, STRANGER, task.id)
    with pytest.raises(TaskNotFound) as missing:
        await runtime.watcher.watch(runtime.tasks, STRANGER, uuid.uuid4())
    assert hidden.value.code == missing.value.code == "TASK_NOT_FOUND"
    assert runtime.watcher.watched == 0
    # The owner may watch its own task.
    owner = Principal("someone-else", frozenset())
    async with contextlib.aclosing(await runtime.watcher.watch(runtime.tasks, owner, task.id)) as stream:
        assert (await next_update(stream)).task.id == task.id


async def test_a_task_deleted_while_watched_ends_the_stream_not_found(
    runtime: Runtime, worker: Worker, db: asyncpg.Connection
) -> None:
    task = await create(runtime)
    assert runtime.watcher is not None
    async with contextlib.aclosing(await runtime.watcher.watch(runtime.tasks, ADMIN, task.id)) as stream:
        await next_update(stream)
        # As a refused first start removes its row (TaskService.create); the run is stopped first.
        await runtime.client.get_workflow_handle(f"task-{task.id}").terminate(reason="test")
        await db.execute("DELETE FROM tasks WHERE id = $1", task.id)
        with pytest.raises(TaskNotFound):
            await next_update(stream)
    assert runtime.watcher.watched == 0


async def test_a_burst_of_changes_is_coalesced(
    runtime: Runtime, worker: Worker, db: asyncpg.Connection
) -> None:
    task = await create(runtime)
    interval = 0.5
    watcher = TaskWatcher(
        runtime.repository, runtime.engine.pool, runtime.settings.database.url, min_interval=interval
    )
    reads = 0
    get_versioned = runtime.repository.get_versioned

    async def counted(task_id: uuid.UUID) -> tuple[Task, int] | None:
        nonlocal reads
        reads += 1
        return await get_versioned(task_id)

    runtime.repository.get_versioned = counted  # type: ignore[method-assign]
    try:
        async with contextlib.aclosing(await watcher.watch(runtime.tasks, ADMIN, task.id)) as stream:
            await next_update(stream)
            reads = 0
            started = time.monotonic()
            # 200 committed updates, each notified (written directly: the workflow's own mirror
            # writes are throttled already, and this is about the watcher's bound).
            for n in range(1, 201):
                await db.execute("UPDATE tasks SET processed_records = $2 WHERE id = $1", task.id, n)
            seen = await until(stream, lambda u: u.task.counts.processed == 200)
            elapsed = time.monotonic() - started
        # At most one read (so one snapshot) per interval, plus the one in progress at each end.
        bound = elapsed / interval + 2
        assert len(seen) <= bound, (len(seen), elapsed)
        assert reads <= bound, (reads, elapsed)
        assert len(seen) < 200
    finally:
        del runtime.repository.get_versioned
        await watcher.close()


async def test_a_slow_watcher_gets_the_latest_snapshot_not_a_backlog(
    runtime: Runtime, worker: Worker, db: asyncpg.Connection
) -> None:
    task = await create(runtime)
    assert runtime.watcher is not None
    async with contextlib.aclosing(await runtime.watcher.watch(runtime.tasks, ADMIN, task.id)) as stream:
        first = await next_update(stream)
        for n in range(1, 31):
            await db.execute("UPDATE tasks SET processed_records = $2 WHERE id = $1", task.id, n)
        # The watcher did not read meanwhile; what it gets next is never older than what it had,
        # and within a few snapshots it is the last state (no 30-snapshot backlog).
        seen = await until(stream, lambda u: u.task.counts.processed == 30)
        assert len(seen) <= 3, [u.task.counts.processed for u in seen]
        assert all(u.seq > first.seq for u in seen)


async def test_many_watchers_share_one_feed(runtime: Runtime, worker: Worker) -> None:
    task = await create(runtime)
    assert runtime.watcher is not None
    watcher = runtime.watcher
    streams = [await watcher.watch(runtime.tasks, ADMIN, task.id) for _ in range(50)]

    async def follow(stream: Stream) -> list[TaskUpdate]:
        async with contextlib.aclosing(stream):
            seen = await until(stream, lambda u: u.final)
            await ended(stream)
            return seen

    following = [asyncio.ensure_future(follow(s)) for s in streams]
    # Every stream subscribed (its first snapshot is there): one task watched, by 50 streams.
    await _eventually(lambda: watcher.watched == 1)
    await report(runtime, task.id, total_records=2, processed_records=1)
    await report(runtime, task.id, processed_records=2, success_records=2, is_completed=True)
    results = await asyncio.gather(*following)
    for seen in results:
        assert seen[-1].final and seen[-1].task.status is TaskStatus.COMPLETED
    assert len({seen[-1].seq for seen in results}) == 1
    assert watcher.watched == 0


async def test_notifications_alone_deliver_changes(runtime: Runtime, worker: Worker) -> None:
    task = await create(runtime)
    # No version checks at all: only LISTEN/NOTIFY can tell this watcher.
    watcher = TaskWatcher(runtime.repository, None, runtime.settings.database.url)
    try:
        async with contextlib.aclosing(await watcher.watch(runtime.tasks, ADMIN, task.id)) as stream:
            await next_update(stream)
            await report(runtime, task.id, total_records=5, processed_records=2)
            await until(stream, lambda u: u.task.counts.processed == 2)
    finally:
        await watcher.close()


async def test_version_checks_alone_deliver_changes(runtime: Runtime, worker: Worker) -> None:
    task = await create(runtime)
    # No listening connection: the batched version check (the safety net) must find the change.
    watcher = TaskWatcher(runtime.repository, runtime.engine.pool, None, fallback_poll=0.2)
    try:
        async with contextlib.aclosing(await watcher.watch(runtime.tasks, ADMIN, task.id)) as stream:
            await next_update(stream)
            await report(runtime, task.id, total_records=5, processed_records=2)
            await until(stream, lambda u: u.task.counts.processed == 2)
    finally:
        await watcher.close()


async def test_quiet_streams_yield_keepalives(runtime: Runtime, worker: Worker) -> None:
    task = await create(runtime)
    watcher = TaskWatcher(
        runtime.repository, runtime.engine.pool, runtime.settings.database.url, keepalive=0.1
    )
    try:
        async with contextlib.aclosing(await watcher.watch(runtime.tasks, ADMIN, task.id)) as stream:
            assert await asyncio.wait_for(anext(stream), STEP) is not None
            assert await asyncio.wait_for(anext(stream), STEP) is None
            assert await asyncio.wait_for(anext(stream), STEP) is None
    finally:
        await watcher.close()


async def test_close_ends_open_streams_and_refuses_new_ones(runtime: Runtime, worker: Worker) -> None:
    task = await create(runtime)
    watcher = TaskWatcher(runtime.repository, runtime.engine.pool, runtime.settings.database.url)
    stream = await watcher.watch(runtime.tasks, ADMIN, task.id)
    async with contextlib.aclosing(stream):
        await next_update(stream)
        waiting = asyncio.ensure_future(next_update(stream))
        await asyncio.sleep(0.1)
        await watcher.close()
        with pytest.raises(ServiceUnavailable):
            await asyncio.wait_for(waiting, STEP)
    assert watcher.watched == 0
    with pytest.raises(ServiceUnavailable):
        await watcher.watch(runtime.tasks, ADMIN, task.id)


async def test_a_failed_task_awaiting_its_automatic_retry_does_not_end_the_stream(
    runtime: Runtime, worker: Worker, db: asyncpg.Connection
) -> None:
    task = await create(runtime)
    assert runtime.watcher is not None
    async with contextlib.aclosing(await runtime.watcher.watch(runtime.tasks, ADMIN, task.id)) as stream:
        await next_update(stream)
        # The mirror as an auto-retrying workflow leaves it between attempts.
        await db.execute(
            "UPDATE tasks SET status = 'failed', next_retry_at = now() + interval '1 hour' WHERE id = $1",
            task.id,
        )
        waiting = await until(stream, lambda u: u.task.status is TaskStatus.FAILED)
        assert not waiting[-1].final
        await db.execute("UPDATE tasks SET next_retry_at = NULL WHERE id = $1", task.id)
        end = await until(stream, lambda u: u.final)
        assert end[-1].task.status is TaskStatus.FAILED
        await ended(stream)


async def _eventually(check: Callable[[], bool], timeout: float = STEP) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not met"
        await asyncio.sleep(0.02)
