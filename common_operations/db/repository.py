"""Task persistence: the mirror writes (idempotent, sequence-ordered) and the reads of the API.

Hot paths use the Piccolo engine's asyncpg pool with hand-written SQL: each mirror write is one
statement (task row + event + log line), which Postgres runs atomically.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

import asyncpg
from piccolo.engine.postgres import PostgresEngine

from common_operations.db.audit_repository import Executor
from common_operations.db.outage import UNAVAILABLE, as_outage
from common_operations.domain.authorization import ListScope
from common_operations.domain.errors import ServiceUnavailable
from common_operations.domain.status import ACTIVE_STATUSES, TaskStatus
from common_operations.domain.task import (
    Page,
    PageRequest,
    RecordCounts,
    Task,
    TaskEvent,
    TaskLog,
    TaskQuery,
    escape_like,
)
from common_operations.domain.workflow_types import LogLine, MirrorOutcome, MirrorWrite
from common_operations.infra.metrics import tasks as task_metrics

TASK_COLUMNS = (
    "id, task_type, entity_type, status, priority, requested_by, params, file_name, file_size, "
    "input_file_url, output_file_url, total_records, processed_records, success_records, "
    "failed_records, scheduled_at, started_at, completed_at, error_message, retry_count, "
    "max_retries, created_at, updated_at, seq, run_id, next_retry_at, owner_run_id, files, source_task_id, "
    "callback_url, created_by"
)


def _insert_task_sql(*, with_key: bool) -> str:
    """The insert of a new task with its ``task.created`` event and first log line, one statement.

    With the caller's idempotency key the task is inserted only if the key was not there: a
    concurrent insert of the same key waits for the first one's commit, then inserts nothing (the
    key's foreign key to the task is checked at the end of the statement).
    """
    key = (
        "k AS (\n"
        "  INSERT INTO idempotency_keys (principal, key, request_hash, task_id, created_at)\n"
        "  VALUES ($21, $22, $23, $1, $14)\n"
        "  ON CONFLICT (principal, key) DO NOTHING\n"
        "  RETURNING task_id\n"
        "), "
        if with_key
        else ""
    )
    guard = "WHERE EXISTS (SELECT 1 FROM k)" if with_key else ""
    return f"""
WITH {key}t AS (
  INSERT INTO tasks ({TASK_COLUMNS}, progress_percentage)
  SELECT $1, $2, $3, $4, $5, $6, $7::jsonb, $8, $9, $10, $11, 0, 0, 0, 0, $12, NULL, NULL, NULL,
         0, $13, $14, $14, 0, NULL, NULL, NULL, $17::jsonb, $18, $19, $20, 0
  {guard}
  RETURNING id
), e AS (
  INSERT INTO task_events (task_id, seq, event_type, status, payload, created_at)
  SELECT id, 0, 'task.created', $4, $15::jsonb, $14 FROM t
)
INSERT INTO task_logs (task_id, seq, level, message, created_at)
SELECT id, 0, 'info', $16, $14 FROM t
"""


_INSERT_TASK = _insert_task_sql(with_key=False)
_INSERT_TASK_WITH_KEY = _insert_task_sql(with_key=True)

# How often an idempotent insert tries again when the key it met vanished (its task was deleted).
_KEY_ATTEMPTS = 3

# One writer per task. A run chain's write applies only if the chain owns the row (owner_run_id) and
# its sequence is newer; the chain's first write takes the row over only if the row's sequence is
# still the one the run was started from (claim). A guarded write (the reconciler, after the owning
# run closed without recording its end) applies only on the exact sequence and owner it read, and
# hands the row to a closed owner, so a late write of the old owner is fenced out rather than taken
# for a replay.
# The same sequence with another event is not a replay: a worker that died after its local
# activity wrote, but before its workflow task completed, leaves a write that history never
# recorded, and the workflow task's next attempt (which may see new events, e.g. a cancel request)
# can take another path and write something else under that sequence. That write applies.
# The event and log lines are inserted only when the row update applied, so a replayed write adds
# nothing; ``prev`` tells a replay (same owner, sequence already there) from a fenced-out writer.
_MIRROR = """
WITH prev AS (
  SELECT seq, owner_run_id, task_type, status, processed_records, started_at, created_at,
         GREATEST(created_at, scheduled_at) AS queued_at
  FROM tasks WHERE id = $1
), u AS (
  UPDATE tasks SET
    seq = $2, run_id = COALESCE($3, run_id), owner_run_id = COALESCE($26, $20, owner_run_id), status = $4,
    total_records = $5, processed_records = $6, success_records = $7, failed_records = $8,
    progress_percentage = $9, started_at = COALESCE($10, started_at), completed_at = $11,
    error_message = $12, output_file_url = COALESCE($13, output_file_url), updated_at = $14,
    retry_count = $17, next_retry_at = $18, files = files || COALESCE($27::jsonb, '{}'::jsonb)
  WHERE id = $1 AND CASE
    WHEN $19::bigint IS NOT NULL THEN seq = $19 AND owner_run_id IS NOT DISTINCT FROM $20
    WHEN $21::bigint IS NOT NULL THEN seq = $21 AND owner_run_id IS DISTINCT FROM $20
    ELSE owner_run_id = $20 AND (seq < $2 OR (seq = $2 AND NOT EXISTS (
      SELECT 1 FROM task_events x WHERE x.task_id = $1 AND x.seq = $2 AND x.event_type = $15::text
    )))
  END
  RETURNING id, cache_version
), e AS (
  INSERT INTO task_events (task_id, seq, event_type, status, payload, created_at)
  SELECT $1, $2, $15, $4, $16::jsonb, $14
  WHERE EXISTS (SELECT 1 FROM u)
), l AS (
  INSERT INTO task_logs (task_id, seq, level, message, details, created_at)
  SELECT $1, $2, x.level, x.message, x.details, COALESCE(x.at, $14)
  FROM unnest($22::text[], $23::text[], $24::text[], $25::timestamptz[])
       WITH ORDINALITY AS x(level, message, details, at, n)
  WHERE EXISTS (SELECT 1 FROM u)
  ORDER BY x.n
)
SELECT (SELECT count(*) FROM u) AS applied, (SELECT seq FROM prev) AS prev_seq,
       (SELECT owner_run_id FROM prev) AS prev_owner, EXISTS (SELECT 1 FROM prev) AS found,
       (SELECT cache_version FROM u) AS cache_version,
       -- The row before the write, for the task metrics (infra.metrics.tasks.mirror_written).
       (SELECT task_type FROM prev) AS task_type, (SELECT status FROM prev) AS prev_status,
       (SELECT processed_records FROM prev) AS prev_processed,
       (SELECT started_at FROM prev) AS prev_started_at, (SELECT created_at FROM prev) AS created_at,
       (SELECT queued_at FROM prev) AS queued_at
"""

# An annotation (e.g. a stuck workflow) beside the task's current state: once per sequence and type.
_ANNOTATE = """
WITH t AS (
  SELECT id, seq, status FROM tasks WHERE id = $1
), ins AS (
  INSERT INTO task_events (task_id, seq, event_type, status, payload, created_at)
  SELECT t.id, t.seq, $2::text, t.status, $3::jsonb, $4 FROM t
  WHERE NOT EXISTS (
    SELECT 1 FROM task_events e WHERE e.task_id = $1 AND e.seq = t.seq AND e.event_type = $2::text
  )
  RETURNING seq
), l AS (
  INSERT INTO task_logs (task_id, seq, level, message, created_at)
  SELECT $1, ins.seq, $5, $6, $4 FROM ins
)
SELECT count(*) FROM ins
"""

EXACT_TOTAL_LIMIT = 10_000
SEARCH_EXACT_TOTAL_LIMIT = 1_000

_SEARCH_EXPR = "(id::text || ' ' || coalesce(file_name, '') || ' ' || coalesce(error_message, ''))"


def _task_from_row(row: asyncpg.Record) -> Task:
    params = row["params"]
    return Task(
        id=row["id"],
        task_type=row["task_type"],
        entity_type=row["entity_type"],
        status=TaskStatus(row["status"]),
        priority=row["priority"],
        requested_by=row["requested_by"],
        params=json.loads(params) if isinstance(params, str) else (params or {}),
        file_name=row["file_name"],
        file_size=row["file_size"],
        input_file_url=row["input_file_url"],
        output_file_url=row["output_file_url"],
        counts=RecordCounts(
            total=row["total_records"],
            processed=row["processed_records"],
            success=row["success_records"],
            failed=row["failed_records"],
        ),
        scheduled_at=row["scheduled_at"],
        started_at=row["started_at"],
        completed_at=row["completed_at"],
        error_message=row["error_message"],
        retry_count=row["retry_count"],
        max_retries=row["max_retries"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        seq=row["seq"],
        run_id=row["run_id"],
        next_retry_at=row["next_retry_at"],
        owner_run_id=row["owner_run_id"],
        files=_json_object(row["files"]),
        source_task_id=row["source_task_id"],
        callback_url=row["callback_url"],
        created_by=row["created_by"],
    )


def _json_object(value: Any) -> dict[str, Any]:
    if isinstance(value, str):
        loaded = json.loads(value)
        return loaded if isinstance(loaded, dict) else {}
    return dict(value or {})


def event_payload(write: MirrorWrite) -> dict[str, Any]:
    """The JSON body stored with a task event (what subscribers receive)."""
    payload: dict[str, Any] = {
        "status": write.status,
        "message": write.message,
        "totalRecords": write.total_records,
        "processedRecords": write.processed_records,
        "successRecords": write.success_records,
        "failedRecords": write.failed_records,
        "progressPercentage": write.progress_percentage,
        "retryCount": write.retry_count,
    }
    if write.error_message:
        payload["errorMessage"] = write.error_message
    if write.output_file_url:
        payload["outputFileUrl"] = write.output_file_url
    if write.next_retry_at:
        payload["nextRetryAt"] = write.next_retry_at.isoformat()
    return payload


def _created_payload(task: Task, message: str) -> dict[str, Any]:
    """The ``task.created`` event's payload; names the creator when it acts for someone else."""
    payload: dict[str, Any] = {"status": task.status.value, "message": message}
    if task.created_by and task.created_by != task.requested_by:
        payload["createdBy"] = task.created_by
        payload["onBehalfOf"] = task.requested_by
    return payload


class _Pool:
    """The pool's query methods, raising :class:`ServiceUnavailable` (503) while Postgres cannot serve."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    @property
    def raw(self) -> asyncpg.Pool:
        """The pool itself, for a transaction (its caller maps outages)."""
        return self._pool

    async def execute(self, query: str, *args: Any) -> str:
        try:
            return str(await self._pool.execute(query, *args))
        except UNAVAILABLE as err:
            raise _unavailable(err) from err

    async def fetch(self, query: str, *args: Any) -> list[asyncpg.Record]:
        try:
            return list(await self._pool.fetch(query, *args))
        except UNAVAILABLE as err:
            raise _unavailable(err) from err

    async def fetchrow(self, query: str, *args: Any) -> asyncpg.Record | None:
        try:
            return await self._pool.fetchrow(query, *args)
        except UNAVAILABLE as err:
            raise _unavailable(err) from err

    async def fetchval(self, query: str, *args: Any) -> Any:
        try:
            return await self._pool.fetchval(query, *args)
        except UNAVAILABLE as err:
            raise _unavailable(err) from err


def _unavailable(err: BaseException) -> ServiceUnavailable:
    outage = as_outage(err)
    assert outage is not None
    return outage


@dataclass(frozen=True, slots=True)
class StoredKey:
    """A caller's idempotency key as stored: the hash of the request it came with and its task."""

    request_hash: str
    task_id: uuid.UUID


class TaskWrites(Protocol):
    """Told of every committed change of a ``tasks`` row (the task cache raises its floor)."""

    async def written(self, task_id: uuid.UUID, version: int) -> None:
        """The row now has ``cache_version`` ``version``; must not raise."""

    async def deleted(self, task_id: uuid.UUID) -> None:
        """The row is gone; must not raise."""


class TaskRepository:
    """Reads and writes of ``tasks``, ``task_events`` and ``task_logs``."""

    def __init__(self, engine: PostgresEngine, *, writes: TaskWrites | None = None) -> None:
        """Use the engine's connection pool (it must be started).

        Args:
            engine: the Piccolo engine.
            writes: told after each update or delete of a task row (the task cache).
        """
        if engine.pool is None:
            raise RuntimeError("the Postgres engine's connection pool is not started")
        self._pool = _Pool(engine.pool)
        self.writes = writes

    async def ping(self) -> None:
        """Raise if Postgres does not answer."""
        await self._pool.fetchval("SELECT 1")

    async def insert_task(self, task: Task, message: str) -> None:
        """Insert a new task with its ``task.created`` event and first log line, atomically."""
        await self._pool.execute(_INSERT_TASK, *self._insert_args(task, message))

    async def insert_task_once(
        self, task: Task, message: str, *, principal: str, key: str, request_hash: str
    ) -> StoredKey | None:
        """Insert a new task under the caller's idempotency key, unless the key is taken.

        Returns:
            ``None`` when the task was inserted; else the key as stored (by an earlier request).
        """
        args = self._insert_args(task, message)
        for _ in range(_KEY_ATTEMPTS):
            result = await self._pool.execute(_INSERT_TASK_WITH_KEY, *args, principal, key, request_hash)
            if result.endswith(" 1"):
                return None
            row = await self._pool.fetchrow(
                "SELECT request_hash, task_id FROM idempotency_keys WHERE principal = $1 AND key = $2",
                principal,
                key,
            )
            if row is not None:
                return StoredKey(row["request_hash"], row["task_id"])
            # The key's task was deleted (cascade) between the two statements: the key is free.
        raise ServiceUnavailable("the idempotency key keeps changing; retry the request")

    @staticmethod
    def _insert_args(task: Task, message: str) -> tuple[Any, ...]:
        assert task.created_at is not None
        return (
            task.id,
            task.task_type,
            task.entity_type,
            task.status.value,
            task.priority,
            task.requested_by,
            json.dumps(task.params),
            task.file_name,
            task.file_size,
            task.input_file_url,
            task.output_file_url,
            task.scheduled_at,
            task.max_retries,
            task.created_at,
            json.dumps(_created_payload(task, message)),
            message,
            json.dumps(task.files),
            task.source_task_id,
            task.callback_url,
            task.created_by,
        )

    async def set_run_id(self, task_id: uuid.UUID, run_id: str) -> None:
        """Record the run working on a task whose runs have not written yet (no state change)."""
        version = await self._pool.fetchval(
            "UPDATE tasks SET run_id = $2 WHERE id = $1 AND run_id IS NULL RETURNING cache_version",
            task_id,
            run_id,
        )
        if version is not None and self.writes is not None:
            await self.writes.written(task_id, version)

    async def _mirror(
        self, write: MirrorWrite, expect_seq: int | None, new_owner: str | None = None
    ) -> asyncpg.Record:
        at = write.at or datetime.now().astimezone()
        # The run decides which lines a write logs; a write made outside any run logs its message.
        lines = write.logs or [LogLine(write.level, write.message, at)]
        started = time.perf_counter()
        row: asyncpg.Record = await self._pool.fetchrow(
            _MIRROR,
            uuid.UUID(write.task_id),
            write.seq,
            write.run_id or None,
            write.status,
            write.total_records,
            write.processed_records,
            write.success_records,
            write.failed_records,
            write.progress_percentage,
            write.started_at,
            write.completed_at,
            write.error_message,
            write.output_file_url,
            at,
            write.event_type,
            json.dumps(event_payload(write)),
            write.retry_count,
            write.next_retry_at,
            expect_seq,
            write.owner,
            write.claim_seq,
            [line.level for line in lines],
            [line.message for line in lines],
            [line.details for line in lines],
            [line.at for line in lines],
            new_owner,
            json.dumps(write.files) if write.files else None,
        )
        # Counted where the write is applied (the worker's mirror, the reconciler), exactly once.
        task_metrics.mirror_written(write, row, time.perf_counter() - started)
        if row["applied"] and self.writes is not None:
            await self.writes.written(uuid.UUID(write.task_id), row["cache_version"])
        return row

    async def apply(self, write: MirrorWrite) -> MirrorOutcome:
        """Apply a workflow run's write (fenced by its owner token; see ``_MIRROR``).

        Returns:
            ``APPLIED``; ``DUPLICATE`` when an earlier attempt of the same write already applied
            (activity retry); ``FENCED`` when another run chain owns the task or it was deleted.
        """
        row = await self._mirror(write, None)
        if row["applied"]:
            return MirrorOutcome.APPLIED
        if row["found"] and row["prev_owner"] == write.owner and row["prev_seq"] >= write.seq:
            return MirrorOutcome.DUPLICATE
        return MirrorOutcome.FENCED

    async def apply_guarded(self, write: MirrorWrite, *, expect_seq: int, new_owner: str) -> bool:
        """Apply a write of a writer outside the owning run (the reconciler) on an exact match.

        The write applies only if the row still has ``expect_seq`` and ``write.owner`` as its owner,
        i.e. nothing was written since the caller read it. The row then belongs to ``new_owner``
        (no run), so the previous owner can write nothing more.

        Returns:
            Whether it applied.
        """
        row = await self._mirror(write, expect_seq, new_owner)
        return bool(row["applied"])

    async def annotate(
        self, task_id: uuid.UUID, event_type: str, message: str, *, level: str = "warning", **payload: Any
    ) -> bool:
        """Add an event and a log line at the task's current sequence, once per sequence and type.

        Annotations record what happened beside a task's state (a stuck workflow) without changing
        it, so they never compete with the owning run's writes.

        Returns:
            Whether it was added (False if the task is gone or already annotated at this sequence).
        """
        added = await self._pool.fetchval(
            _ANNOTATE,
            task_id,
            event_type,
            json.dumps({"message": message, **payload}),
            datetime.now().astimezone(),
            level,
            message,
        )
        return bool(added)

    async def get(self, task_id: uuid.UUID) -> Task | None:
        """One task, or ``None``."""
        row = await self._pool.fetchrow(f"SELECT {TASK_COLUMNS} FROM tasks WHERE id = $1", task_id)
        return _task_from_row(row) if row else None

    async def get_versioned(self, task_id: uuid.UUID) -> tuple[Task, int] | None:
        """One task with its ``cache_version`` (what the task cache compares), or ``None``."""
        row = await self._pool.fetchrow(
            f"SELECT {TASK_COLUMNS}, cache_version FROM tasks WHERE id = $1", task_id
        )
        return (_task_from_row(row), int(row["cache_version"])) if row else None

    async def get_many(self, task_ids: Sequence[uuid.UUID]) -> list[Task]:
        """The tasks among ``task_ids`` that exist."""
        rows = await self._pool.fetch(
            f"SELECT {TASK_COLUMNS} FROM tasks WHERE id = ANY($1::uuid[])", list(task_ids)
        )
        return [_task_from_row(r) for r in rows]

    async def page(self, query: TaskQuery, scope: ListScope | None = None) -> Page[Task]:
        """A page of tasks, newest first, and the total matching the filters.

        ``scope`` (None: every task) keeps only the tasks the caller may see; the page and the total
        are both of those.
        """
        clauses: list[str] = []
        args: list[Any] = []

        def add(sql: str, value: Any) -> None:
            args.append(value)
            clauses.append(sql.format(f"${len(args)}"))

        if scope is not None and not scope.everything:
            # Each branch is served by its own index ((requested_by, created_at), (created_by,
            # created_at), (task_type, …)); Postgres ORs the bitmaps.
            args.append(scope.subject or "")
            me = f"${len(args)}"
            mine = f"requested_by = {me} OR created_by = {me}"
            if scope.task_types:
                args.append(sorted(scope.task_types))
                mine += f" OR task_type = ANY(${len(args)}::text[])"
            clauses.append(f"({mine})")
        if query.task_type:
            add("task_type = {}", query.task_type)
        if query.entity_type:
            add("entity_type = {}", query.entity_type)
        if query.status:
            add("status = {}", query.status.value)
        if query.requested_by:
            add("requested_by = {}", query.requested_by)
        if query.start_date:
            add("created_at >= {}", query.start_date)
        if query.end_date:
            add("created_at <= {}", query.end_date)
        if query.search:
            add(_SEARCH_EXPR + " ILIKE {}", f"%{escape_like(query.search)}%")
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        n = len(args)
        page_sql = (
            f"SELECT {TASK_COLUMNS} FROM tasks {where} "
            f"ORDER BY created_at DESC, id DESC LIMIT ${n + 1} OFFSET ${n + 2}"
        )
        # Page and count run on two connections at once.
        rows, total = await asyncio.gather(
            self._pool.fetch(page_sql, *args, query.page_size, query.offset),
            self._count(where, args, SEARCH_EXACT_TOTAL_LIMIT if query.search else EXACT_TOTAL_LIMIT),
        )
        return Page([_task_from_row(r) for r in rows], total, query.page, query.page_size)

    async def _count(self, where: str, args: list[Any], limit: int) -> int:
        """Exact up to ``limit`` matches, the planner's estimate beyond.

        An exact count of a broad filter over a million rows costs 150-250 ms on every page; no
        one pages through ten thousand tasks by the total, so beyond that the estimate serves.
        A search rechecks every trigram candidate in the heap, hence its lower limit.
        """
        exact = await self._pool.fetchval(
            f"SELECT count(*) FROM (SELECT 1 FROM tasks {where} LIMIT {limit + 1}) AS m", *args
        )
        if exact <= limit:
            return int(exact)
        plan = await self._pool.fetchval(f"EXPLAIN (FORMAT JSON) SELECT 1 FROM tasks {where}", *args)
        estimate = int(json.loads(plan)[0]["Plan"]["Plan Rows"])
        return max(estimate, int(exact))

    async def delete_closed(
        self, task_id: uuid.UUID, *, audit: Callable[[Executor], Awaitable[None]] | None = None
    ) -> bool:
        """Delete a task (and, by cascade, its logs and events) unless a run works on it or will.

        Args:
            task_id: the task.
            audit: writes the delete's audit row on the given connection, in the delete's
                transaction (only when a row was deleted): both commit, or neither.

        Returns:
            Whether a row was deleted.
        """
        sql = "DELETE FROM tasks WHERE id = $1 AND NOT (status = ANY($2::text[])) AND next_retry_at IS NULL"
        active = [s.value for s in ACTIVE_STATUSES]
        if audit is None:
            result: str = await self._pool.execute(sql, task_id, active)
            deleted = result.endswith(" 1")
        else:
            try:
                async with self._pool.raw.acquire() as conn, conn.transaction():
                    deleted = str(await conn.execute(sql, task_id, active)).endswith(" 1")
                    if deleted:
                        await audit(conn)
            except UNAVAILABLE as err:
                raise _unavailable(err) from err
        if deleted and self.writes is not None:
            await self.writes.deleted(task_id)
        return deleted

    async def delete_unstarted(self, task_id: uuid.UUID) -> None:
        """Remove a task whose first run Temporal refused for good (no run ever wrote to it)."""
        result = await self._pool.execute(
            "DELETE FROM tasks WHERE id = $1 AND seq = 0 AND owner_run_id IS NULL", task_id
        )
        if result.endswith(" 1") and self.writes is not None:
            await self.writes.deleted(task_id)

    async def count_unfinished(self, owner: str, *, at_most: int | None = None) -> int:
        """``owner``'s (requested_by) tasks not finished yet: active, or failed with a retry to come.

        Counted up to ``at_most`` (the cap being checked), so an owner with a million open tasks
        costs no more than one at the cap; served by the (requested_by, status, …) index.
        """
        limit = "" if at_most is None else f" LIMIT {int(at_most)}"
        count = await self._pool.fetchval(
            "SELECT count(*) FROM (SELECT 1 FROM tasks WHERE requested_by = $1 AND (status = ANY($2::text[])"
            f" OR (status = $3 AND next_retry_at IS NOT NULL)){limit}) AS unfinished",
            owner,
            [s.value for s in ACTIVE_STATUSES],
            TaskStatus.FAILED.value,
        )
        return int(count)

    async def logs(self, task_id: uuid.UUID, page: PageRequest) -> Page[TaskLog]:
        """A page of a task's log lines, oldest first."""
        rows, total = await asyncio.gather(
            self._pool.fetch(
                "SELECT id, task_id, seq, level, message, created_at, details FROM task_logs "
                "WHERE task_id = $1 ORDER BY seq, id LIMIT $2 OFFSET $3",
                task_id,
                page.page_size,
                page.offset,
            ),
            self._pool.fetchval("SELECT count(*) FROM task_logs WHERE task_id = $1", task_id),
        )
        items = [
            TaskLog(
                id=r["id"],
                task_id=r["task_id"],
                seq=r["seq"],
                level=r["level"],
                message=r["message"],
                created_at=r["created_at"],
                details=r["details"],
            )
            for r in rows
        ]
        return Page(items, int(total), page.page, page.page_size)

    async def events(self, task_id: uuid.UUID, page: PageRequest) -> Page[TaskEvent]:
        """A page of a task's events, in sequence order."""
        rows, total = await asyncio.gather(
            self._pool.fetch(
                "SELECT id, task_id, seq, event_type, status, payload, created_at, published_at "
                "FROM task_events WHERE task_id = $1 ORDER BY seq, id LIMIT $2 OFFSET $3",
                task_id,
                page.page_size,
                page.offset,
            ),
            self._pool.fetchval("SELECT count(*) FROM task_events WHERE task_id = $1", task_id),
        )
        items = [
            TaskEvent(
                id=r["id"],
                task_id=r["task_id"],
                seq=r["seq"],
                event_type=r["event_type"],
                status=TaskStatus(r["status"]),
                payload=json.loads(r["payload"]) if isinstance(r["payload"], str) else r["payload"],
                created_at=r["created_at"],
                published_at=r["published_at"],
            )
            for r in rows
        ]
        return Page(items, int(total), page.page, page.page_size)

    async def runless(self, older_than: datetime, limit: int) -> list[Task]:
        """Active tasks with no known workflow run, last touched before ``older_than``."""
        rows = await self._pool.fetch(
            f"SELECT {TASK_COLUMNS} FROM tasks WHERE status = ANY($1::text[]) AND run_id IS NULL "
            "AND updated_at < $2 ORDER BY updated_at LIMIT $3",
            [s.value for s in ACTIVE_STATUSES],
            older_than,
            limit,
        )
        return [_task_from_row(r) for r in rows]
