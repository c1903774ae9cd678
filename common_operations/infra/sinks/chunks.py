"""One face for every entity sink as the bulk activities use it: chunks with checkpoints, row sources.

A chunk's rows, its checkpoint and the rejections of its rows are committed together: in the sink's
own transaction for a ``postgres`` sink, in the service database after the sink answered for an
``http`` sink (whose writes carry an idempotency key per chunk, so a chunk sent again after a crash
is recognised by the owning service) or a ``temporal`` sink (one workflow per batch, under an id
derived from the chunk, so a chunk sent again finds the batch's earlier result). The rejections kept
with the checkpoint repair the service database's row results if a crash came between the two.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import asyncpg
import httpx
from temporalio.client import Client

from common_operations.db.bulk_repository import BulkRepository, JobCheckpoint, RowRejection
from common_operations.domain.entities import EntitySpec, FieldSpec, Filter, ImportMode, Rejection
from common_operations.infra.sinks.http import CircuitBreaker, HttpSink, HttpSource
from common_operations.infra.sinks.postgres import (
    Checkpoint,
    PostgresSink,
    database_url_for,
    ensure_database,
)
from common_operations.infra.sinks.temporal_sink import TemporalSink

# Where a job resumes, and the rejections of the chunk committed last (one shape for every sink).
ChunkCheckpoint = JobCheckpoint


@dataclass(frozen=True, slots=True)
class ChunkWrite:
    """One chunk of an import: its rows, where the input stands after it, and the job's counts."""

    job_id: str
    chunk_no: int
    first_row: int
    last_row: int
    end_offset: int
    rows: Sequence[tuple[int, tuple[Any, ...]]]
    rejected: Sequence[RowRejection]
    mode: ImportMode
    processed: int
    done: bool
    dry_run: bool


class ChunkSink(Protocol):
    """Where an import's chunks go."""

    async def checkpoint(self, job_id: str) -> ChunkCheckpoint | None:
        """The job's last committed chunk, if any."""
        ...

    async def write_chunk(self, chunk: ChunkWrite) -> list[RowRejection]:
        """Apply the chunk's rows and commit the checkpoint after it; the rows the sink refused."""
        ...


class RowSource(Protocol):
    """Where an export's rows come from."""

    fields: Sequence[FieldSpec]

    async def count(self, filters: Sequence[Filter]) -> int:
        """How many rows the filters select (0 when unknown)."""
        ...

    def stream(self, filters: Sequence[Filter], *, batch_rows: int) -> AsyncGenerator[list[tuple[Any, ...]]]:
        """The selected rows, in batches of ``fields`` tuples."""
        ...


def _as_tuples(rejections: Sequence[RowRejection]) -> list[tuple[int, str, str | None, str]]:
    return [(r.row_no, r.code, r.field, r.message) for r in rejections]


def _from_tuples(rows: Sequence[Sequence[Any]]) -> list[RowRejection]:
    return [RowRejection(int(r[0]), str(r[1]), r[2], str(r[3])) for r in rows]


class _PostgresChunks:
    def __init__(self, sink: PostgresSink) -> None:
        self.sink = sink

    async def checkpoint(self, job_id: str) -> ChunkCheckpoint | None:
        cp = await self.sink.checkpoint(job_id)
        if cp is None:
            return None
        return ChunkCheckpoint(
            next_offset=cp.next_offset,
            next_row=cp.next_row,
            chunk_no=cp.chunk_no,
            processed=cp.processed,
            first_row=cp.first_row,
            done=cp.done,
            rejections=_from_tuples(cp.rejections),
        )

    async def write_chunk(self, chunk: ChunkWrite) -> list[RowRejection]:
        checkpoint = Checkpoint(
            next_offset=chunk.end_offset,
            next_row=chunk.last_row + 1,
            chunk_no=chunk.chunk_no,
            processed=chunk.processed,
            success=0,
            failed=0,
            first_row=chunk.first_row,
            done=chunk.done,
        )
        refused = await self.sink.write_chunk(
            chunk.job_id,
            chunk.rows,
            chunk.mode,
            checkpoint,
            dry_run=chunk.dry_run,
            known_rejections=_as_tuples(chunk.rejected),
        )
        return _from_tuples(refused)


class RemoteWriter(Protocol):
    """A sink owned by another service (``http``, ``temporal``): it applies rows and answers per row."""

    async def write_chunk(
        self,
        job_id: str,
        chunk_no: int,
        rows: Sequence[tuple[int, tuple[Any, ...]]],
        mode: ImportMode,
        dry_run: bool = False,
    ) -> list[Rejection]:
        """Apply one chunk (recognising one sent before); the rows refused."""
        ...


class _RemoteChunks:
    """A remote sink's chunks, with the checkpoints and rejections kept in the service database."""

    def __init__(self, sink: RemoteWriter, jobs: BulkRepository) -> None:
        self.sink = sink
        self.jobs = jobs

    async def checkpoint(self, job_id: str) -> ChunkCheckpoint | None:
        return await self.jobs.checkpoint(job_id)

    async def write_chunk(self, chunk: ChunkWrite) -> list[RowRejection]:
        refused = []
        if chunk.rows:
            sent = await self.sink.write_chunk(
                chunk.job_id, chunk.chunk_no, chunk.rows, chunk.mode, chunk.dry_run
            )
            refused = _from_tuples(sent)
        if not chunk.dry_run:
            await self.jobs.save_checkpoint(
                chunk.job_id,
                JobCheckpoint(
                    next_offset=chunk.end_offset,
                    next_row=chunk.last_row + 1,
                    chunk_no=chunk.chunk_no,
                    processed=chunk.processed,
                    first_row=chunk.first_row,
                    done=chunk.done,
                    rejections=sorted([*chunk.rejected, *refused], key=lambda r: r.row_no),
                ),
            )
        return refused


class _PostgresRows:
    def __init__(self, sink: PostgresSink) -> None:
        self.sink = sink
        self.fields: Sequence[FieldSpec] = sink.export_fields

    async def count(self, filters: Sequence[Filter]) -> int:
        return await self.sink.estimate(filters)

    async def copy_csv(self, filters: Sequence[Filter], output: Callable[[bytes], Awaitable[None]]) -> int:
        return await self.sink.copy_csv(filters, output)

    def stream(self, filters: Sequence[Filter], *, batch_rows: int) -> AsyncGenerator[list[tuple[Any, ...]]]:
        return self.sink.stream(filters, batch_rows=batch_rows)


class _HttpRows:
    def __init__(self, source: HttpSource, fields: Sequence[FieldSpec]) -> None:
        self.source = source
        self.fields = fields

    async def count(self, filters: Sequence[Filter]) -> int:
        return 0  # a paginated endpoint gives no total: progress counts rows only

    def stream(self, filters: Sequence[Filter], *, batch_rows: int) -> AsyncGenerator[list[tuple[Any, ...]]]:
        return self.source.stream(filters, batch_rows=batch_rows)


class SinkRegistry:
    """Connections to the sinks the declared entities name, opened on first use."""

    def __init__(
        self,
        service_url: str,
        databases: Mapping[str, str | None],
        jobs: BulkRepository,
        *,
        breaker_reset_after: float = 30.0,
        client: Client | None = None,
        task_queue: str | None = None,
    ) -> None:
        """Open pools for ``databases`` (by name; an empty URL is the service's own server).

        ``client`` and ``task_queue`` (the service's Temporal client and task queue, where a
        ``temporal`` sink's batch workflows run) are needed for imports into ``temporal`` sinks only.
        """
        self._breaker_reset_after = breaker_reset_after
        self._temporal = client
        self._task_queue = task_queue
        self._service_url = service_url
        self._databases = databases
        self._jobs = jobs
        self._pools: dict[str, asyncpg.Pool] = {}
        self._lock = asyncio.Lock()
        self._http: httpx.AsyncClient | None = None
        self._breakers: dict[str, CircuitBreaker] = {}

    async def pool(self, database: str) -> asyncpg.Pool:
        """The pool of sink database ``database`` (created, with the database, on first use)."""
        async with self._lock:
            pool = self._pools.get(database)
            if pool is None:
                url = database_url_for(self._databases, database, self._service_url)
                await ensure_database(url)
                pool = await asyncpg.create_pool(url, min_size=1, max_size=8)
                self._pools[database] = pool
            return pool

    async def ensure_tables(self, entities: Mapping[str, EntitySpec]) -> None:
        """Create the databases and tables of every ``postgres`` entity (idempotent)."""
        for entity in entities.values():
            if entity.sink.kind == "postgres" and entity.sink.database:
                await PostgresSink(await self.pool(entity.sink.database), entity).ensure_table()

    def _client(self) -> httpx.AsyncClient:
        if self._http is None:
            self._http = httpx.AsyncClient()
        return self._http

    def _breaker(self, entity: EntitySpec) -> CircuitBreaker:
        return self._breakers.setdefault(entity.name, CircuitBreaker(reset_after=self._breaker_reset_after))

    async def chunk_sink(self, entity: EntitySpec, fields: Sequence[FieldSpec]) -> ChunkSink:
        """Where ``entity``'s imported rows (with ``fields``) go.

        Raises:
            ValueError: the entity's sink cannot take imports (e.g. ``temporal`` without a client).
        """
        kind = entity.sink.kind
        if kind == "postgres" and entity.sink.database:
            sink = PostgresSink(await self.pool(entity.sink.database), entity, fields)
            await sink.ensure_table()
            return _PostgresChunks(sink)
        if kind == "http":
            return _RemoteChunks(
                HttpSink(entity, self._client(), breaker=self._breaker(entity), fields=fields), self._jobs
            )
        if kind == "temporal":
            if self._temporal is None or not self._task_queue:
                raise ValueError(
                    f"entity {entity.name!r}: imports into a 'temporal' sink need the service's Temporal "
                    "client and task queue (SinkRegistry(client=..., task_queue=...))"
                )
            return _RemoteChunks(
                TemporalSink(entity, self._temporal, self._task_queue, fields=fields), self._jobs
            )
        raise ValueError(f"entity {entity.name!r}: imports into a {kind!r} sink are not supported")

    async def row_source(self, entity: EntitySpec) -> RowSource:
        """Where ``entity``'s exported rows come from.

        Raises:
            ValueError: the entity's sink cannot serve exports.
        """
        kind = entity.sink.kind
        if kind == "postgres" and entity.sink.database:
            sink = PostgresSink(await self.pool(entity.sink.database), entity)
            await sink.ensure_table()
            return _PostgresRows(sink)
        if kind == "http":
            return _HttpRows(HttpSource(entity, self._client()), entity.fields)
        if kind == "temporal":
            raise ValueError(
                "exports from a 'temporal' sink are not supported; "
                "declare export_url (http) or a postgres sink"
            )
        raise ValueError(f"entity {entity.name!r}: exports from a {kind!r} sink are not supported")

    async def close(self) -> None:
        """Close every pool and the HTTP client."""
        for pool in self._pools.values():
            await pool.close()
        self._pools.clear()
        if self._http is not None:
            await self._http.aclose()
            self._http = None
