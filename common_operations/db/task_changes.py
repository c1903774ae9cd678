"""Learning that a task row changed: Postgres ``LISTEN`` on one connection, and versions in batches.

Every update or delete of a ``tasks`` row notifies ``co_task_changed`` (migration 02:10) with
``<task id> <cache_version>`` or ``<task id> deleted``. :class:`TaskChangeListener` keeps one
dedicated connection per process listening (outside the pool: ``LISTEN`` is session state, and the
pool's connections skip asyncpg's session reset), reconnects with backoff when it is lost, and says
so, since notifications sent meanwhile are gone. :func:`task_versions` reads the current versions of
many tasks in one query: the safety net for anything a listener could have missed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final

import asyncpg

from common_operations.db.outage import UNAVAILABLE

log = logging.getLogger(__name__)

CHANNEL: Final = "co_task_changed"
DELETED: Final = "deleted"


@dataclass(frozen=True, slots=True)
class TaskChange:
    """One notification: the row's new ``cache_version``, or ``None`` when it was deleted."""

    task_id: uuid.UUID
    version: int | None


def parse_change(payload: str) -> TaskChange | None:
    """The change a notification's payload names; ``None`` for a payload this code did not send."""
    task_id, _, version = payload.partition(" ")
    try:
        parsed = uuid.UUID(task_id)
        return TaskChange(parsed, None if version == DELETED else int(version))
    except ValueError:
        return None


async def task_versions(pool: asyncpg.Pool, task_ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, int]:
    """The ``cache_version`` of each task that exists (one indexed query for all of them)."""
    rows = await pool.fetch("SELECT id, cache_version FROM tasks WHERE id = ANY($1::uuid[])", list(task_ids))
    return {row["id"]: int(row["cache_version"]) for row in rows}


class TaskChangeListener:
    """One ``LISTEN co_task_changed`` connection, kept up until :meth:`close`."""

    def __init__(
        self,
        dsn: str,
        on_change: Callable[[TaskChange], None],
        on_listening: Callable[[], None],
        *,
        retry_delay: float = 1.0,
        max_retry_delay: float = 30.0,
        check_interval: float = 30.0,
    ) -> None:
        """Listen on the database at ``dsn`` once :meth:`start` is called.

        Args:
            dsn: the service database (the pool's DSN).
            on_change: called (in the event loop) with every change notified.
            on_listening: called each time listening (re)starts: changes made while no connection
                listened were not notified, so the caller must look for itself.
            retry_delay: first wait before a reconnection; doubled per failure.
            max_retry_delay: longest wait between reconnections.
            check_interval: seconds between checks that a quiet connection still answers (a
                half-open TCP connection would otherwise listen to nothing forever).
        """
        self._dsn = dsn
        self._on_change = on_change
        self._on_listening = on_listening
        self._retry_delay = retry_delay
        self._max_retry_delay = max_retry_delay
        self._check_interval = check_interval
        self._task: asyncio.Task[None] | None = None
        self._listening = False

    @property
    def listening(self) -> bool:
        """Whether notifications arrive now."""
        return self._listening

    def start(self) -> None:
        """Start listening in the background (idempotent)."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="task-change-listener")

    async def close(self) -> None:
        """Stop listening and close the connection."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        delay = self._retry_delay
        while True:
            try:
                conn = await asyncpg.connect(self._dsn, timeout=10)
            except (*UNAVAILABLE, asyncpg.PostgresError) as err:
                log.warning("task changes: cannot listen (%s); retrying in %.0f s", type(err).__name__, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self._max_retry_delay)
                continue
            try:
                await self._listen(conn)
                delay = self._retry_delay
            except (*UNAVAILABLE, asyncpg.PostgresError) as err:  # OSError covers TimeoutError
                log.warning("task changes: listening connection lost (%s); reconnecting", type(err).__name__)
            finally:
                self._listening = False
                with contextlib.suppress(Exception):
                    # terminate, not close: close waits for the server, which may be the one gone.
                    conn.terminate()
            await asyncio.sleep(delay)

    async def _listen(self, conn: asyncpg.Connection) -> None:
        """Listen on ``conn`` until it is lost or stops answering."""
        lost = asyncio.Event()
        conn.add_termination_listener(lambda _conn: lost.set())
        await conn.add_listener(CHANNEL, self._notified)
        self._listening = True
        self._on_listening()
        while not lost.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(lost.wait(), self._check_interval)
                break
            await conn.fetchval("SELECT 1", timeout=min(10.0, self._check_interval))
        raise ConnectionResetError("the listening connection was closed")

    def _notified(self, _conn: Any, _pid: int, _channel: str, payload: str) -> None:
        change = parse_change(payload)
        if change is None:
            log.warning("task changes: ignored a notification %r", payload[:100])
            return
        self._on_change(change)
