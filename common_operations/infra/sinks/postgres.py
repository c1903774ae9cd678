"""The Postgres sink: imports COPY chunks into a staging table and merge them; exports stream.

Each chunk is one transaction that writes its rows *and* the job's checkpoint, so a retried chunk
never applies twice and a failed one leaves nothing behind.

Rows of one chunk are applied as if one by one in file order:

* ``upsert``: a key repeated within the chunk is written once, with its last row's values (the
  earlier rows count as applied, then overwritten).
* ``insert``: the first row of a key wins; a later row of the same key in the chunk, and any row
  whose key exists already, is rejected with ``DUPLICATE_KEY``.
* ``update``: as upsert, but rows whose key does not exist are rejected with ``NOT_FOUND``.

A chunk the set-based statement cannot apply (a unique constraint on a non-key field, a constraint
or value the table refuses) is re-applied row by row inside savepoints, and only the offending rows
are rejected: ``UNIQUE_VIOLATION``, ``REQUIRED`` (a new key in a file without a required column)
or ``CONSTRAINT_VIOLATION`` (other constraints, values out of the column's range).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import operator
import re
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import asyncpg

from common_operations.db.engine import with_database
from common_operations.domain.entities import (
    EntitySpec,
    FieldSpec,
    FieldType,
    Filter,
    ImportMode,
    Rejection,
)

CHECKPOINT_TABLE = "co_import_checkpoints"
# One encoder for every JSON value of an import: json.dumps with options builds a new one per call.
_encode_json = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode

_PG_TYPES = {
    FieldType.STRING: "text",
    FieldType.INT: "bigint",
    FieldType.DECIMAL: "numeric",
    FieldType.BOOL: "boolean",
    FieldType.DATE: "date",
    FieldType.DATETIME: "timestamptz",
    FieldType.ENUM: "text",
    FieldType.JSON: "jsonb",
}
_UNIQUE_DETAIL = re.compile(r"Key \((?P<columns>[^)]*)\)=")
# Errors of one row's values the row-by-row fallback reports per row instead of failing the chunk.
_ROW_ERRORS = (asyncpg.IntegrityConstraintViolationError, asyncpg.DataError)


@dataclass(slots=True)
class Checkpoint:
    """Where an import job resumes: the input offset and row after the last committed chunk.

    ``first_row`` is the first row of that chunk, ``done`` marks the file's last chunk, and
    ``rejections`` are that chunk's rejected rows (kept so the caller can repair its own records
    of them after a crash between this commit and its own).
    """

    next_offset: int
    next_row: int
    chunk_no: int
    processed: int
    success: int
    failed: int
    first_row: int = 1
    done: bool = False
    rejections: list[Rejection] = field(default_factory=list)


def quote_ident(name: str) -> str:
    """``name`` as a quoted SQL identifier (``schema.table`` quoted per part)."""
    return ".".join('"' + part.replace('"', '""') + '"' for part in name.split("."))


def _constraint_name(table: str, column: str) -> str:
    base = f"{table.replace('.', '_')}_{column}_key"
    if len(base) <= 63:
        return base
    digest = hashlib.sha1(base.encode()).hexdigest()[:10]
    return f"{base[:50]}_{digest}"


class PostgresSink:
    """Writes import chunks into, and streams exports out of, an entity's table."""

    def __init__(
        self, pool: asyncpg.Pool, entity: EntitySpec, fields: Sequence[FieldSpec] | None = None
    ) -> None:
        """Bind the sink to a pool and an entity.

        Args:
            pool: a pool on the entity's sink database.
            entity: the declaration; its sink must be ``postgres``.
            fields: the fields present in the import file (the converter's ``fields``), in the order
                of the row tuples; all declared fields when omitted.

        Raises:
            ValueError: the sink is not postgres, or ``fields`` lacks a key field.
        """
        if entity.sink.kind != "postgres" or not entity.sink.table:
            raise ValueError(f"entity {entity.name!r} has no postgres sink")
        self.pool = pool
        self.entity = entity
        self.table = quote_ident(entity.sink.table)
        self.fields: tuple[FieldSpec, ...] = tuple(fields) if fields is not None else entity.fields
        names = {f.name for f in self.fields}
        missing = [f.name for f in entity.key_fields if f.name not in names]
        if missing:
            raise ValueError(f"entity {entity.name!r}: the fields written lack key field(s) {missing}")
        self.export_fields: tuple[FieldSpec, ...] = entity.fields
        self._keys = tuple(quote_ident(f.column) for f in entity.key_fields)
        self._key_positions = tuple(self.fields.index(f) for f in entity.key_fields)
        # The key of a row tuple (a scalar for a one-field key): itemgetter is the fastest way.
        self._key_of = operator.itemgetter(*self._key_positions)
        self._columns = tuple(quote_ident(f.column) for f in self.fields)
        self._updates = tuple(quote_ident(f.column) for f in self.fields if not f.key)
        # The file lacks some required columns: an upsert must not propose incomplete rows for keys
        # that exist already.
        self._partial = any(f.required and f.name not in names for f in entity.fields)
        self._json_positions = tuple(i for i, f in enumerate(self.fields) if f.type is FieldType.JSON)
        signature = "|".join([entity.sink.table, *(f"{f.column}:{f.type}" for f in self.fields)])
        # One staging table per (table, column set), kept by the connection and emptied at each
        # commit: later chunks on the same pooled connection skip creating it.
        self._stage = "co_stage_" + hashlib.sha1(signature.encode()).hexdigest()[:16]
        self._stage_columns = ("row_no", *(f.column for f in self.fields))
        columns_sql = ", ".join(
            ["row_no bigint", *(f"{quote_ident(f.column)} {_PG_TYPES[f.type]}" for f in self.fields)]
        )
        self._create_stage = (
            f'CREATE TEMP TABLE IF NOT EXISTS "{self._stage}" ({columns_sql}) ON COMMIT DELETE ROWS'
        )
        self._unique_columns = {
            _constraint_name(entity.sink.table, f.column): f.name for f in entity.fields if f.unique
        }
        self._column_fields = {f.column: f.name for f in entity.fields}

    async def ensure_table(self) -> None:
        """Create the entity's table (and the checkpoint table) if they do not exist."""
        table_name = self.entity.sink.table or ""
        definitions = []
        for f in self.entity.fields:
            null = " NOT NULL" if f.required else ""
            definitions.append(f"{quote_ident(f.column)} {_PG_TYPES[f.type]}{null}")
        definitions.append(f"PRIMARY KEY ({', '.join(self._keys)})")
        for f in self.entity.fields:
            if f.unique and not (f.key and len(self._keys) == 1):
                name = quote_ident(_constraint_name(table_name, f.column))
                definitions.append(f"CONSTRAINT {name} UNIQUE ({quote_ident(f.column)})")
        async with self.pool.acquire() as conn, conn.transaction():
            # Concurrent CREATE ... IF NOT EXISTS can still collide in the catalog; serialise them.
            await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", f"co-ensure:{table_name}")
            if "." in table_name:
                await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {quote_ident(table_name.split('.')[0])}")
            await conn.execute(f"CREATE TABLE IF NOT EXISTS {self.table} ({', '.join(definitions)})")
            await conn.execute(
                f"CREATE TABLE IF NOT EXISTS {CHECKPOINT_TABLE} ("
                "job_id text PRIMARY KEY, next_offset bigint NOT NULL, next_row bigint NOT NULL, "
                "chunk_no integer NOT NULL, processed bigint NOT NULL, success bigint NOT NULL, "
                "failed bigint NOT NULL, first_row bigint NOT NULL DEFAULT 1, "
                "done boolean NOT NULL DEFAULT false, "
                "rejections jsonb NOT NULL DEFAULT '[]', updated_at timestamptz NOT NULL DEFAULT now())"
            )

    async def checkpoint(self, job_id: str) -> Checkpoint | None:
        """The last committed checkpoint of ``job_id``, if any."""
        row = await self.pool.fetchrow(
            "SELECT next_offset, next_row, chunk_no, processed, success, failed, first_row, done, "
            f"rejections FROM {CHECKPOINT_TABLE} WHERE job_id = $1",
            job_id,
        )
        if row is None:
            return None
        rejections: list[Rejection] = [
            (int(r[0]), str(r[1]), r[2], str(r[3])) for r in json.loads(row["rejections"] or "[]")
        ]
        return Checkpoint(
            next_offset=row["next_offset"],
            next_row=row["next_row"],
            chunk_no=row["chunk_no"],
            processed=row["processed"],
            success=row["success"],
            failed=row["failed"],
            first_row=row["first_row"],
            done=row["done"],
            rejections=rejections,
        )

    async def delete_checkpoint(self, job_id: str) -> None:
        """Forget ``job_id``'s checkpoint (the job has finished)."""
        await self.pool.execute(f"DELETE FROM {CHECKPOINT_TABLE} WHERE job_id = $1", job_id)

    def _dedupe(
        self, rows: Sequence[tuple[int, tuple[Any, ...]]], mode: ImportMode
    ) -> tuple[list[tuple[Any, ...]], list[Rejection]]:
        """Staging records (one per key) and the rows rejected as repeats within the chunk."""
        key_of = self._key_of
        chosen: dict[Any, tuple[int, tuple[Any, ...]]] = {}
        rejected: list[Rejection] = []
        insert = mode == "insert"
        for row_no, values in rows:
            key = key_of(values)
            if not insert:
                chosen[key] = (row_no, values)
                continue
            earlier = chosen.get(key)
            if earlier is None:
                chosen[key] = (row_no, values)
            else:
                shown = key if isinstance(key, tuple) else (key,)
                rejected.append(
                    (
                        row_no,
                        "DUPLICATE_KEY",
                        None,
                        f"key {self._key_text(shown)} is already in row {earlier[0]}",
                    )
                )
        json_positions = self._json_positions
        records: list[tuple[Any, ...]] = []
        append = records.append
        for row_no, values in chosen.values():
            if json_positions:
                converted = list(values)
                for i in json_positions:
                    if converted[i] is not None:
                        converted[i] = _encode_json(converted[i])
                values = tuple(converted)
            append((row_no, *values))
        if len(chosen) != len(rows):
            # A repeated key keeps its first place in the dict but takes a later row: reorder.
            records.sort(key=lambda r: r[0])
        return records, rejected

    def _key_text(self, key: tuple[Any, ...]) -> str:
        names = [f.name for f in self.entity.key_fields]
        return ", ".join(f"{n}={v!r}" for n, v in zip(names, key, strict=True))

    def _statement(self, mode: ImportMode, *, single: bool) -> str:
        """The set-based statement of ``mode``; returns the ``row_no`` of rows it rejects.

        ``single`` limits it to the staging row ``$1`` (the row-by-row fallback).
        """
        stage = f'"{self._stage}"'
        where = " WHERE s.row_no = $1" if single else ""
        columns = ", ".join(self._columns)
        selected = ", ".join(f"s.{c}" for c in self._columns)
        key_match = " AND ".join(f"t.{k} = s.{k}" for k in self._keys)
        returned_match = " AND ".join(f"w.{k} = s.{k}" for k in self._keys)
        conflict = ", ".join(self._keys)
        if mode == "upsert":
            action = (
                "DO UPDATE SET " + ", ".join(f"{c} = EXCLUDED.{c}" for c in self._updates)
                if self._updates
                else "DO NOTHING"
            )
            if not self._partial:
                return (
                    f"INSERT INTO {self.table} AS t ({columns}) SELECT {selected} FROM {stage} s{where} "
                    f"ORDER BY s.row_no ON CONFLICT ({conflict}) {action}"
                )
            # Postgres checks NOT NULL on the proposed row before it looks for a conflict, so a file
            # without some required columns updates existing rows first and inserts only new keys
            # (which then lack a required value and are rejected per row).
            sets = ", ".join(f"{c} = s.{c}" for c in self._updates) if self._updates else None
            update = (
                f"UPDATE {self.table} AS t SET {sets} FROM {stage} s WHERE {key_match}"
                + (" AND s.row_no = $1" if single else "")
                + f" RETURNING {', '.join(f't.{k}' for k in self._keys)}"
                if sets
                else f"SELECT {', '.join(f't.{k}' for k in self._keys)} FROM {self.table} t "
                f"JOIN {stage} s ON {key_match}" + (" WHERE s.row_no = $1" if single else "")
            )
            return (
                f"WITH w AS ({update}) INSERT INTO {self.table} AS t ({columns}) "
                f"SELECT {selected} FROM {stage} s WHERE NOT EXISTS (SELECT 1 FROM w WHERE {returned_match})"
                + (" AND s.row_no = $1" if single else "")
                + f" ORDER BY s.row_no ON CONFLICT ({conflict}) {action}"
            )
        if mode == "insert":
            return (
                f"WITH w AS (INSERT INTO {self.table} AS t ({columns}) "
                f"SELECT {selected} FROM {stage} s{where} "
                f"ORDER BY s.row_no ON CONFLICT ({conflict}) DO NOTHING RETURNING {', '.join(self._keys)}) "
                f"SELECT s.row_no FROM {stage} s WHERE NOT EXISTS (SELECT 1 FROM w WHERE {returned_match})"
                + (" AND s.row_no = $1" if single else "")
            )
        if not self._updates:
            # Nothing to change: the rows only have to exist.
            return (
                f"SELECT s.row_no FROM {stage} s "
                f"WHERE NOT EXISTS (SELECT 1 FROM {self.table} t WHERE {key_match})"
                + (" AND s.row_no = $1" if single else "")
            )
        sets = ", ".join(f"{c} = s.{c}" for c in self._updates)
        return (
            f"WITH w AS (UPDATE {self.table} AS t SET {sets} FROM {stage} s WHERE {key_match}"
            + (" AND s.row_no = $1" if single else "")
            + f" RETURNING {', '.join(f't.{k}' for k in self._keys)}) "
            f"SELECT s.row_no FROM {stage} s WHERE NOT EXISTS (SELECT 1 FROM w WHERE {returned_match})"
            + (" AND s.row_no = $1" if single else "")
        )

    def _missing_code(self, mode: ImportMode) -> tuple[str, str]:
        if mode == "insert":
            return "DUPLICATE_KEY", "a row with this key exists already"
        return "NOT_FOUND", "no row with this key exists"

    def _row_error(self, exc: Exception) -> tuple[str, str | None, str]:
        if isinstance(exc, asyncpg.UniqueViolationError):
            constraint = getattr(exc, "constraint_name", None)
            name = self._unique_columns.get(constraint or "")
            if name is None:
                match = _UNIQUE_DETAIL.search(getattr(exc, "detail", None) or "")
                if match:
                    name = self._column_fields.get(match.group("columns").split(",")[0].strip())
            detail = getattr(exc, "detail", None) or str(exc)
            text = f"{name or 'a unique field'}: value already used by another row ({detail})"
            return "UNIQUE_VIOLATION", name, text
        column = getattr(exc, "column_name", None)
        name = self._column_fields.get(column or "")
        if isinstance(exc, asyncpg.NotNullViolationError) and name is not None:
            return "REQUIRED", name, f"{name}: a value is required (the file has no {name} column)"
        return "CONSTRAINT_VIOLATION", name, f"the database refused the row: {exc}"

    async def write_chunk(
        self,
        job_id: str,
        rows: Sequence[tuple[int, tuple[Any, ...]]],
        mode: ImportMode,
        checkpoint: Checkpoint,
        *,
        dry_run: bool = False,
        known_rejections: Sequence[Rejection] = (),
    ) -> list[Rejection]:
        """Apply one chunk and record ``checkpoint`` in the same transaction.

        Args:
            job_id: the import job (the checkpoint's key).
            rows: ``(row number, values)`` with values in ``fields`` order (converted rows).
            mode: ``upsert``, ``insert`` or ``update`` (see the module docstring for repeats).
            checkpoint: where the job resumes once this chunk is committed.
            dry_run: find the rejections, then roll everything back (no checkpoint either).
            known_rejections: rows of the chunk the caller rejected already (conversion errors);
                stored with the checkpoint together with the sink's own rejections.

        Returns:
            The rejected rows as ``(row number, code, field, message)``, ordered by row number.
        """
        records, rejected = self._dedupe(rows, mode)
        async with self.pool.acquire() as conn:
            transaction = conn.transaction()
            await transaction.start()
            try:
                rejected.extend(await self._apply(conn, records, mode))
                if not dry_run:
                    kept = sorted([*known_rejections, *rejected], key=lambda r: r[0])
                    await conn.execute(
                        f"INSERT INTO {CHECKPOINT_TABLE} AS c (job_id, next_offset, next_row, chunk_no, "
                        "processed, success, failed, first_row, done, rejections, updated_at) "
                        "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, now()) "
                        "ON CONFLICT (job_id) DO UPDATE SET next_offset = EXCLUDED.next_offset, "
                        "next_row = EXCLUDED.next_row, chunk_no = EXCLUDED.chunk_no, "
                        "processed = EXCLUDED.processed, success = EXCLUDED.success, "
                        "failed = EXCLUDED.failed, first_row = EXCLUDED.first_row, done = EXCLUDED.done, "
                        "rejections = EXCLUDED.rejections, updated_at = EXCLUDED.updated_at",
                        job_id,
                        checkpoint.next_offset,
                        checkpoint.next_row,
                        checkpoint.chunk_no,
                        checkpoint.processed,
                        checkpoint.success,
                        checkpoint.failed,
                        checkpoint.first_row,
                        checkpoint.done,
                        json.dumps([list(r) for r in kept], ensure_ascii=False),
                    )
            except BaseException:
                await transaction.rollback()
                raise
            if dry_run:
                await transaction.rollback()
            else:
                await transaction.commit()
        rejected.sort(key=lambda r: r[0])
        return rejected

    async def _apply(
        self, conn: asyncpg.Connection, records: list[tuple[Any, ...]], mode: ImportMode
    ) -> list[Rejection]:
        if not records:
            return []
        await conn.execute(self._create_stage)
        await conn.copy_records_to_table(self._stage, records=records, columns=self._stage_columns)
        code, message = self._missing_code(mode)
        try:
            # A savepoint, so a refused set-based statement leaves the chunk's transaction usable.
            async with conn.transaction():
                if mode == "upsert":
                    await conn.execute(self._statement(mode, single=False))
                    return []
                missing = await conn.fetch(self._statement(mode, single=False))
                return [(r["row_no"], code, None, message) for r in missing]
        except _ROW_ERRORS:
            pass
        single = self._statement(mode, single=True)
        rejected: list[Rejection] = []
        for record in records:
            row_no = record[0]
            try:
                async with conn.transaction():
                    if mode == "upsert":
                        await conn.execute(single, row_no)
                    elif await conn.fetch(single, row_no):
                        rejected.append((row_no, code, None, message))
            except _ROW_ERRORS as exc:
                error_code, field, text = self._row_error(exc)
                rejected.append((row_no, error_code, field, text))
        return rejected

    def _where(self, filters: Sequence[Filter]) -> tuple[str, list[Any]]:
        clauses: list[str] = []
        args: list[Any] = []
        for flt in filters:
            column = quote_ident(flt.field.column)
            args.append(flt.value)
            n = len(args)
            if flt.op == "eq":
                clauses.append(f"{column} = ${n}")
            elif flt.op == "in":
                clauses.append(f"{column} = ANY(${n}::{_PG_TYPES[flt.field.type]}[])")
            elif flt.op == "gte":
                clauses.append(f"{column} >= ${n}")
            else:
                clauses.append(f"{column} <= ${n}")
        return (" WHERE " + " AND ".join(clauses) if clauses else ""), args

    @property
    def _source(self) -> str:
        """What exports read: the table, or the entity's configured ``export_query`` as a subquery."""
        query = self.entity.sink.export_query
        return f"({query}) AS export_source" if query else self.table

    async def count(self, filters: Sequence[Filter]) -> int:
        """The exact number of rows ``filters`` select."""
        where, args = self._where(filters)
        value = await self.pool.fetchval(f"SELECT count(*) FROM {self._source}{where}", *args)
        return int(value)

    async def estimate(self, filters: Sequence[Filter]) -> int:
        """The planner's estimate of the rows ``filters`` select.

        An export's progress needs no exact total up front, and counting costs a scan of its own.
        """
        where, args = self._where(filters)
        plan = await self.pool.fetchval(f"EXPLAIN (FORMAT JSON) SELECT 1 FROM {self._source}{where}", *args)
        loaded = json.loads(plan) if isinstance(plan, str) else plan
        return int(loaded[0]["Plan"]["Plan Rows"])

    async def stream(
        self, filters: Sequence[Filter], *, batch_rows: int = 5000
    ) -> AsyncGenerator[list[tuple[Any, ...]]]:
        """The rows ``filters`` select, in key order, in batches of ``export_fields`` tuples.

        One snapshot (a repeatable-read, read-only transaction) on one connection with a server-side
        cursor, so a large export neither sees concurrent writes half-way nor loads all rows. Close
        the generator (``contextlib.aclosing``) when stopping early, to give back the connection.
        """
        where, args = self._where(filters)
        columns = ", ".join(quote_ident(f.column) for f in self.export_fields)
        query = f"SELECT {columns} FROM {self._source}{where} ORDER BY {', '.join(self._keys)}"
        json_positions = [i for i, f in enumerate(self.export_fields) if f.type is FieldType.JSON]
        async with (
            self.pool.acquire() as conn,
            conn.transaction(isolation="repeatable_read", readonly=True),
        ):
            cursor = await conn.cursor(query, *args)
            while True:
                records = await cursor.fetch(batch_rows)
                if not records:
                    return
                batch = [tuple(r) for r in records]
                if json_positions:
                    batch = [_decode_json(row, json_positions) for row in batch]
                yield batch
                if len(records) < batch_rows:
                    return

    async def copy_csv(
        self,
        filters: Sequence[Filter],
        output: Callable[[bytes], Awaitable[None]],
        *,
        neutralize: bool = True,
    ) -> int:
        """Stream the selected rows as CSV (header first) to ``output``, formatted by Postgres itself.

        ``COPY (SELECT ...) TO STDOUT``: one statement, so one consistent snapshot, and no value is
        decoded or formatted in Python, which is most of an export's cost. Values come out as the
        Python writers write them (ISO 8601 UTC datetimes, ``true``/``false``), and text cells a
        spreadsheet would run as a formula get a leading ``'``. The filters' values are quoted by
        the server (asyncpg inlines them as literals: ``COPY`` takes no parameters).

        Returns:
            How many rows were written.
        """
        where, args = self._where(filters)
        columns = ", ".join(
            f"{_csv_expression(f, neutralize)} AS {quote_ident(f.name)}" for f in self.export_fields
        )
        query = f"SELECT {columns} FROM {self._source}{where} ORDER BY {', '.join(self._keys)}"
        async with self.pool.acquire() as conn, conn.transaction(readonly=True):
            await conn.execute("SET LOCAL TimeZone = 'UTC'")
            status = await conn.copy_from_query(query, *args, output=output, format="csv", header=True)
        return int(status.split()[-1])


def _csv_expression(field: FieldSpec, neutralize: bool) -> str:
    """The SQL that formats one exported column for CSV as the Python writers would."""
    column = quote_ident(field.column)
    if field.type is FieldType.BOOL:
        return f"CASE WHEN {column} THEN 'true' WHEN NOT {column} THEN 'false' END"
    if field.type is FieldType.DATETIME:
        return f"to_json({column}) #>> '{{}}'"
    if field.type in (FieldType.STRING, FieldType.ENUM) and neutralize:
        # The characters that start a formula: = + - @, tab, carriage return.
        starts = "('=', '+', '-', '@', E'\\t', E'\\r')"
        return f"CASE WHEN left({column}, 1) IN {starts} THEN '''' || {column} ELSE {column} END"
    return column


def _decode_json(row: tuple[Any, ...], positions: Sequence[int]) -> tuple[Any, ...]:
    values = list(row)
    for i in positions:
        if values[i] is not None:
            values[i] = json.loads(values[i])
    return tuple(values)


def database_url_for(databases: Mapping[str, str | None], name: str, service_url: str) -> str:
    """The URL of the sink database ``name``: its configured URL, or the service's server.

    Raises:
        ValueError: ``name`` is not among the configured databases.
    """
    if name not in databases:
        allowed = ", ".join(sorted(databases)) or "(none)"
        raise ValueError(f"unknown sink database {name!r}; configured (bulk.databases): {allowed}")
    url = databases[name]
    return url if url else with_database(service_url, name)


async def ensure_database(url: str) -> None:
    """Create the database ``url`` names if it does not exist; safe when several processes race."""
    name = urlsplit(url).path.lstrip("/") or "postgres"
    conn = await asyncpg.connect(with_database(url, "postgres"))
    try:
        if await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name):
            return
        # Another process may create it between the check and the CREATE.
        with contextlib.suppress(asyncpg.DuplicateDatabaseError, asyncpg.UniqueViolationError):
            await conn.execute(f"CREATE DATABASE {quote_ident(name)}")
    finally:
        await conn.close()
