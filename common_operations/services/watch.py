"""Watching a task: its snapshot now, then on every change (coalesced), ending with its final state.

Both live transports (SSE ``GET /tasks/{id}/stream`` and gRPC ``WatchTask``) are thin layers over
:class:`TaskWatcher`, one per process:

- **Who may watch** is decided once, at the start, by :meth:`TaskService.get_task` (rate limit,
  visibility): a hidden task is the same ``TaskNotFound`` as a missing one, before anything is sent.
- **Learning of changes.** Every update of a task row notifies ``co_task_changed`` with the row's new
  ``cache_version`` (a Postgres trigger, so a change made by the worker or another replica reaches
  this process too); one listening connection per process fans the notifications out. Changes that
  a lost connection missed are caught by a batched version check: every ``safety_poll`` seconds
  while listening, every ``fallback_poll`` seconds while not, and at once after each reconnection.
- **One reader per task.** All watchers of a task share a feed: one read of the row per change,
  and at most one every ``min_interval`` seconds, however many watch it and however fast it
  changes (progress is coalesced: a watcher gets the latest snapshot, never a backlog).
- **Sequence.** A snapshot's ``seq`` is the row's ``cache_version + 1``: raised by Postgres on every
  update, so strictly increasing per task and kept across restarts; never 0, which resumes nothing.
  Resuming with ``after_seq`` sends only newer snapshots, and always the final one.
- **The end.** A task that is completed or cancelled, or failed with no automatic retry to come,
  ends the stream with its final snapshot (``final``). A failed task waiting for its automatic
  retry (``nextRetryAt``) is not final: the retry follows in the same stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Final

import asyncpg

from common_operations.db.outage import UNAVAILABLE
from common_operations.db.repository import TaskRepository
from common_operations.db.task_changes import TaskChange, TaskChangeListener, task_versions
from common_operations.domain.authorization import hidden
from common_operations.domain.errors import DomainError, ServiceUnavailable, ValidationFailed
from common_operations.domain.principal import Principal
from common_operations.domain.status import TaskStatus
from common_operations.domain.task import Task
from common_operations.services.tasks import TaskService

log = logging.getLogger(__name__)

# At most 4 snapshots a second per task (the stream contract's coalescing bound).
MIN_INTERVAL: Final = 0.25
KEEPALIVE: Final = 15.0
SAFETY_POLL: Final = 10.0
FALLBACK_POLL: Final = 1.0
# After a failed read of a watched task (Postgres unreachable), wait this long before the next.
READ_RETRY: Final = 1.0
MAX_SEQ: Final = 2**63 - 1


@dataclass(frozen=True, slots=True)
class TaskUpdate:
    """One snapshot of a watched task.

    Attributes:
        seq: strictly increasing per task (the SSE ``id``, gRPC ``seq``): a resume token.
        task: the task as GetTask shows it.
        final: the last snapshot of the stream (the task reached its final state).
    """

    seq: int
    task: Task
    final: bool


def ends_stream(task: Task) -> bool:
    """Whether ``task`` is in a state the stream ends with.

    Completed and cancelled never change again; failed does only by a retry, which is awaited only
    when the task's own workflow will make it (an automatic retry, ``nextRetryAt`` set).
    """
    if task.status is TaskStatus.FAILED:
        return task.next_retry_at is None
    return task.status.is_final


def parse_after_seq(raw: str | int | None, *, field: str = "Last-Event-ID") -> int | None:
    """A resume token as a client sends it (SSE ``Last-Event-ID``, gRPC ``after_seq``).

    Empty, absent and 0 resume nothing (the stream starts with the current snapshot).

    Raises:
        ValidationFailed: not a whole number from 0 to 2^63-1.
    """
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        return None
    try:
        value = int(raw.strip()) if isinstance(raw, str) else int(raw)
    except ValueError:
        raise ValidationFailed(
            f"{field} must be the id of an event of this stream (a whole number)", field=field
        ) from None
    if not 0 <= value <= MAX_SEQ:
        raise ValidationFailed(f"{field} must be from 0 to {MAX_SEQ}", field=field)
    return value or None


class _Feed:
    """The latest snapshot of one task, read once per change for all of its watchers."""

    __slots__ = ("changed", "gone", "latest", "poke", "pump", "subscribers", "task_id")

    def __init__(self, task_id: uuid.UUID) -> None:
        self.task_id = task_id
        self.latest: TaskUpdate | None = None
        self.gone = False
        self.subscribers = 0
        # Set when the row may have changed: the pump reads it (again).
        self.poke = asyncio.Event()
        self.poke.set()
        # Replaced on every publish; a watcher awaits the one it saw before checking ``latest``, so
        # no publish between its check and its wait is missed.
        self.changed = asyncio.Event()
        self.pump: asyncio.Task[None] | None = None

    def publish(self) -> None:
        changed, self.changed = self.changed, asyncio.Event()
        changed.set()

    def notify(self, version: int | None) -> None:
        """The row has ``version`` now (``None``: it is gone, or the version is unknown)."""
        if version is None or self.latest is None or version + 1 > self.latest.seq:
            self.poke.set()


class TaskWatcher:
    """Live snapshots of tasks for this process's streams (see the module docstring)."""

    def __init__(
        self,
        repository: TaskRepository,
        pool: asyncpg.Pool | None,
        dsn: str | None,
        *,
        min_interval: float = MIN_INTERVAL,
        keepalive: float | None = KEEPALIVE,
        safety_poll: float = SAFETY_POLL,
        fallback_poll: float = FALLBACK_POLL,
    ) -> None:
        """Watch the mirror behind ``repository``; nothing is connected until the first watcher.

        Args:
            repository: reads the watched rows.
            pool: the service database's pool, for the batched version checks (None: no checks,
                only notifications; tests).
            dsn: the database to listen on (None: no notifications, only the version checks).
            min_interval: shortest time between two reads of one task, i.e. its snapshot rate.
            keepalive: seconds without a snapshot after which a stream yields ``None`` (a
                keep-alive); None: never.
            safety_poll: seconds between version checks while notifications arrive.
            fallback_poll: seconds between version checks while they do not.
        """
        self._repository = repository
        self._pool = pool
        self._min_interval = min_interval
        self._keepalive = keepalive
        self._safety_poll = safety_poll
        self._fallback_poll = fallback_poll
        self._feeds: dict[uuid.UUID, _Feed] = {}
        self._listener = TaskChangeListener(dsn, self._changed, self._check_all) if dsn is not None else None
        self._poller: asyncio.Task[None] | None = None
        self._check_now = asyncio.Event()
        self._closed = False

    @property
    def watched(self) -> int:
        """How many tasks are watched now (by any number of streams each)."""
        return len(self._feeds)

    async def watch(
        self, tasks: TaskService, principal: Principal, task_id: uuid.UUID, *, after_seq: int | None = None
    ) -> AsyncGenerator[TaskUpdate | None, None]:
        """Authorize a watch of ``task_id`` now; the stream of its snapshots to iterate.

        The stream yields a :class:`TaskUpdate` per snapshot (the current one first, unless it is
        not newer than ``after_seq``), ``None`` as a keep-alive after ``keepalive`` quiet seconds,
        and ends after the final snapshot. Closing it (``aclose``, or cancelling its consumer)
        frees the watch.

        Args:
            tasks: the task service that decides whether the caller may read the task.
            principal: the caller.
            task_id: the task.
            after_seq: the last ``seq`` the caller has (a resumed stream).

        Raises:
            TaskNotFound: no such task, or one the caller may not see (now, or from the stream
                when the task is deleted while watched).
            ServiceUnavailable: the process is shutting down (from the stream too: resume with
                the last ``seq`` elsewhere).
        """
        if self._closed:
            raise _shutting_down()
        await tasks.get_task(principal, task_id)
        return self._stream(task_id, after_seq or 0)

    async def _stream(self, task_id: uuid.UUID, after: int) -> AsyncGenerator[TaskUpdate | None, None]:
        feed = self._subscribe(task_id)
        checked_token = after == 0
        try:
            while True:
                changed = feed.changed
                if self._closed:
                    raise _shutting_down()
                if feed.gone:
                    raise hidden(task_id)
                update = feed.latest
                if update is not None and not checked_token:
                    # A token beyond the task's current seq was never sent for this task (another
                    # task's, or made up): start over with the current snapshot instead of
                    # waiting for a seq that may never come.
                    checked_token = True
                    if update.seq < after:
                        after = 0
                if update is not None and (update.seq > after or update.final):
                    # A final snapshot is sent even when the caller had it: it ends the stream.
                    after = update.seq
                    yield update
                    if update.final:
                        return
                    continue
                if self._keepalive is None:
                    await changed.wait()
                    continue
                try:
                    await asyncio.wait_for(changed.wait(), self._keepalive)
                except TimeoutError:
                    yield None
        finally:
            self._unsubscribe(feed)

    def _subscribe(self, task_id: uuid.UUID) -> _Feed:
        if self._closed:
            raise _shutting_down()
        self._start()
        feed = self._feeds.get(task_id)
        if feed is None:
            feed = self._feeds[task_id] = _Feed(task_id)
            feed.pump = asyncio.create_task(self._pump(feed), name=f"watch-{task_id}")
        feed.subscribers += 1
        return feed

    def _unsubscribe(self, feed: _Feed) -> None:
        feed.subscribers -= 1
        if feed.subscribers == 0 and self._feeds.get(feed.task_id) is feed:
            del self._feeds[feed.task_id]
            if feed.pump is not None:
                feed.pump.cancel()

    def _start(self) -> None:
        """Start listening and the version checks with the first watch."""
        if self._listener is not None:
            self._listener.start()
        if self._poller is None and self._pool is not None:
            self._poller = asyncio.create_task(self._poll(), name="watch-version-checks")

    async def _pump(self, feed: _Feed) -> None:
        """Read the row whenever it may have changed, at most once per ``min_interval``."""
        while True:
            await feed.poke.wait()
            feed.poke.clear()
            try:
                found = await self._repository.get_versioned(feed.task_id)
            except Exception as err:
                # Postgres unreachable (a 503 from the repository) or a bug: the watchers wait
                # (keep-alives continue) and the read is tried again rather than never.
                if isinstance(err, DomainError):
                    log.warning("watch of task %s: read failed (%s); retrying", feed.task_id, err)
                else:
                    log.exception("watch of task %s: read failed; retrying", feed.task_id)
                feed.poke.set()
                await asyncio.sleep(READ_RETRY)
                continue
            if found is None:
                feed.gone = True
                feed.publish()
                return
            task, version = found
            if feed.latest is None or version + 1 > feed.latest.seq:
                feed.latest = TaskUpdate(seq=version + 1, task=task, final=ends_stream(task))
                feed.publish()
            await asyncio.sleep(self._min_interval)

    def _changed(self, change: TaskChange) -> None:
        feed = self._feeds.get(change.task_id)
        if feed is not None:
            feed.notify(change.version)

    def _check_all(self) -> None:
        """Listening (re)started: compare every watched task's version now."""
        self._check_now.set()

    async def _poll(self) -> None:
        """The safety net: every watched task's version, in one query, now and then."""
        assert self._pool is not None
        while True:
            listening = self._listener is not None and self._listener.listening
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    self._check_now.wait(), self._safety_poll if listening else self._fallback_poll
                )
            self._check_now.clear()
            ids = list(self._feeds)
            if not ids:
                continue
            try:
                versions = await task_versions(self._pool, ids)
            except (*UNAVAILABLE, asyncpg.PostgresError) as err:
                log.warning("watch: version check failed (%s)", type(err).__name__)
                continue
            for task_id in ids:
                if (feed := self._feeds.get(task_id)) is not None:
                    feed.notify(versions.get(task_id))

    async def close(self) -> None:
        """End every stream (they raise ServiceUnavailable: resume elsewhere) and stop listening.

        Idempotent. Called before the servers stop, so that no open stream holds up a shutdown.
        """
        self._closed = True
        feeds = list(self._feeds.values())
        tasks = [f.pump for f in feeds if f.pump is not None]
        if self._poller is not None:
            tasks.append(self._poller)
            self._poller = None
        for task in tasks:
            task.cancel()
        for feed in feeds:
            feed.publish()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._listener is not None:
            await self._listener.close()


def _shutting_down() -> ServiceUnavailable:
    return ServiceUnavailable("this process is shutting down; watch the task again (resume from the last id)")
