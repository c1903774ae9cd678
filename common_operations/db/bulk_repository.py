"""What the bulk activities keep in the service's Postgres: fenced progress, rejected rows, checkpoints.

Progress of a running import or export is written by its activity on behalf of the owning run: the
update applies only while the row is still at the run's sequence and owner (``seq``/``owner``
handed to the activity), so a cancel, failure or new attempt, which the workflow writes with a
newer sequence, can never be overwritten by a late progress write.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import asyncpg

if TYPE_CHECKING:
    from common_operations.db.repository import TaskWrites

_PROGRESS = """
WITH u AS (
  UPDATE tasks SET total_records = $4, processed_records = $5, success_records = $6,
    failed_records = $7, progress_percentage = $8, updated_at = $9
  WHERE id = $1 AND owner_run_id = $2 AND seq = $3 AND status = 'processing'
  RETURNING id, cache_version
), e AS (
  INSERT INTO task_events (task_id, seq, event_type, status, payload, created_at)
  SELECT $1, $3, 'task.progress', 'processing', $10::jsonb, $9 FROM u
)
SELECT cache_version FROM u
"""


@dataclass(frozen=True, slots=True)
class RowRejection:
    """A row an import did not apply, and why."""

    row_no: int
    code: str
    field: str | None
    message: str


@dataclass(frozen=True, slots=True)
class JobCheckpoint:
    """Where a job resumes (next byte and row of its input) and the rejections of its last chunk."""

    next_offset: int
    next_row: int
    chunk_no: int
    processed: int
    first_row: int = 1
    done: bool = False
    rejections: list[RowRejection] = field(default_factory=list)


class BulkRepository:
    """Bulk-job state in the service database."""

    def __init__(self, pool: asyncpg.Pool, *, writes: TaskWrites | None = None) -> None:
        """Use ``pool`` (the service database); tell ``writes`` of each progress write that applied."""
        self._pool = pool
        self._writes = writes

    async def write_progress(
        self, task_id: str, owner: str, seq: int, counts: tuple[int, int, int, int], message: str
    ) -> bool:
        """Mirror a running job's counts (total, processed, success, failed) and a progress event.

        Returns:
            False when the task moved on (a newer state was written, e.g. a cancellation).
        """
        total, processed, success, failed = counts
        pct = min(100.0, processed * 100.0 / total) if total else 0.0
        payload = {
            "status": "processing",
            "message": message,
            "totalRecords": total,
            "processedRecords": processed,
            "successRecords": success,
            "failedRecords": failed,
            "progressPercentage": pct,
        }
        version = await self._pool.fetchval(
            _PROGRESS,
            uuid.UUID(task_id),
            owner,
            seq,
            total,
            processed,
            success,
            failed,
            pct,
            datetime.now(UTC),
            json.dumps(payload),
        )
        if version is None:
            return False
        if self._writes is not None:
            await self._writes.written(uuid.UUID(task_id), version)
        return True

    async def replace_rejections(
        self, task_id: str, first_row: int, last_row: int, rejections: Sequence[RowRejection]
    ) -> None:
        """Record a chunk's rejected rows, replacing what an earlier try of the same chunk recorded."""
        tid = uuid.UUID(task_id)
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute(
                "DELETE FROM task_row_results WHERE task_id = $1 AND row_no BETWEEN $2 AND $3",
                tid,
                first_row,
                last_row,
            )
            if rejections:
                await conn.copy_records_to_table(
                    "task_row_results",
                    records=[(tid, r.row_no, r.code, r.field, r.message) for r in rejections],
                    columns=["task_id", "row_no", "code", "field", "message"],
                )

    async def clear_rejections(self, task_id: str) -> None:
        """Forget every recorded rejection of a task (a job starting over from its first row)."""
        await self._pool.execute("DELETE FROM task_row_results WHERE task_id = $1", uuid.UUID(task_id))

    async def rejections_between(
        self, task_id: str, first_row: int, last_row: int
    ) -> dict[int, RowRejection]:
        """The task's rejected rows from ``first_row`` to ``last_row``, by row number."""
        rows = await self._pool.fetch(
            "SELECT row_no, code, field, message FROM task_row_results"
            " WHERE task_id = $1 AND row_no BETWEEN $2 AND $3",
            uuid.UUID(task_id),
            first_row,
            last_row,
        )
        return {r["row_no"]: RowRejection(r["row_no"], r["code"], r["field"], r["message"]) for r in rows}

    async def rejections(self, task_id: str, *, batch: int = 5000) -> AsyncGenerator[RowRejection]:
        """The task's rejected rows in row order, streamed (a server-side cursor)."""
        async with self._pool.acquire() as conn, conn.transaction():
            cursor = conn.cursor(
                "SELECT row_no, code, field, message FROM task_row_results WHERE task_id = $1"
                " ORDER BY row_no",
                uuid.UUID(task_id),
                prefetch=batch,
            )
            async for r in cursor:
                yield RowRejection(r["row_no"], r["code"], r["field"], r["message"])

    async def checkpoint(self, job_id: str) -> JobCheckpoint | None:
        """Where a job (kept in this database) resumes, if it committed a chunk."""
        row = await self._pool.fetchrow(
            "SELECT next_offset, next_row, chunk_no, processed, first_row, done, rejections"
            " FROM bulk_checkpoints WHERE job_id = $1",
            job_id,
        )
        if row is None:
            return None
        rejections = json.loads(row["rejections"]) if row["rejections"] else []
        return JobCheckpoint(
            next_offset=row["next_offset"],
            next_row=row["next_row"],
            chunk_no=row["chunk_no"],
            processed=row["processed"],
            first_row=row["first_row"],
            done=row["done"],
            rejections=[RowRejection(int(r[0]), str(r[1]), r[2], str(r[3])) for r in rejections],
        )

    async def save_checkpoint(self, job_id: str, cp: JobCheckpoint) -> None:
        """Record that a job's chunks up to ``cp`` are applied."""
        await self._pool.execute(
            "INSERT INTO bulk_checkpoints (job_id, next_offset, next_row, chunk_no, processed, first_row,"
            " done, rejections, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8::jsonb, now())"
            " ON CONFLICT (job_id) DO UPDATE SET next_offset = EXCLUDED.next_offset,"
            " next_row = EXCLUDED.next_row, chunk_no = EXCLUDED.chunk_no, processed = EXCLUDED.processed,"
            " first_row = EXCLUDED.first_row, done = EXCLUDED.done, rejections = EXCLUDED.rejections,"
            " updated_at = now()",
            job_id,
            cp.next_offset,
            cp.next_row,
            cp.chunk_no,
            cp.processed,
            cp.first_row,
            cp.done,
            json.dumps([[r.row_no, r.code, r.field, r.message] for r in cp.rejections]),
        )

    async def failed_before(self, task_id: str, next_row: int) -> int:
        """How many rows before ``next_row`` the task's import rejected."""
        value = await self._pool.fetchval(
            "SELECT count(*) FROM task_row_results WHERE task_id = $1 AND row_no < $2",
            uuid.UUID(task_id),
            next_row,
        )
        return int(value)

    async def task_files(self, task_id: str) -> dict[str, Any]:
        """A task's stored files ({} when it has none or does not exist)."""
        value = await self._pool.fetchval("SELECT files FROM tasks WHERE id = $1", uuid.UUID(task_id))
        loaded = json.loads(value) if isinstance(value, str) else value
        return dict(loaded) if isinstance(loaded, dict) else {}

    async def task_params(self, task_id: str) -> dict[str, Any]:
        """A task's params ({} when it does not exist)."""
        value = await self._pool.fetchval("SELECT params FROM tasks WHERE id = $1", uuid.UUID(task_id))
        loaded = json.loads(value) if isinstance(value, str) else value
        return dict(loaded) if isinstance(loaded, dict) else {}

    async def delete_checkpoint(self, job_id: str) -> None:
        """Forget a finished job's checkpoint."""
        await self._pool.execute("DELETE FROM bulk_checkpoints WHERE job_id = $1", job_id)

    async def final_tasks_before(
        self, cutoff: datetime, limit: int
    ) -> list[tuple[uuid.UUID, dict[str, Any]]]:
        """Final tasks completed before ``cutoff`` (oldest first), with their stored files."""
        rows = await self._pool.fetch(
            "SELECT id, files FROM tasks WHERE status IN ('completed', 'failed', 'cancelled')"
            " AND next_retry_at IS NULL AND completed_at < $1 ORDER BY completed_at LIMIT $2",
            cutoff,
            limit,
        )
        return [
            (r["id"], json.loads(r["files"]) if isinstance(r["files"], str) else dict(r["files"]))
            for r in rows
        ]
