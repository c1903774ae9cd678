"""Built-in import and export: files in storage <-> entity sinks, in chunks, in constant memory.

An import commits each chunk of rows together with its checkpoint (the next byte and row of the
input) in the sink's own transaction, so an activity retried after a crash resumes from the last
committed chunk and applies every row once. Rejected rows are kept in the service database, keyed
by row number, and the row-level result file is built from them and the input once all rows are in.
An export streams one consistent snapshot of its source into a multipart upload.

Parsing and file I/O run in worker threads (the storage clients are synchronous and parsing is CPU
work); the database calls stay on the event loop, so reading chunk N+1 overlaps writing chunk N.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from contextlib import AbstractContextManager, aclosing, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO, Protocol, TypeVar, cast

from temporalio import activity
from temporalio.exceptions import ApplicationError

from common_operations.db.bulk_repository import BulkRepository, RowRejection
from common_operations.domain.bulk import (
    CONTENT_TYPES,
    RESULT_COLUMNS,
    ExportOptions,
    ImportOptions,
    export_options,
    import_options,
    too_many_errors,
)
from common_operations.domain.entities import (
    EntitySpec,
    HeaderInvalid,
    RowConverter,
    RowInvalid,
    parse_filters,
)
from common_operations.domain.errors import DomainError
from common_operations.domain.files import output_key, result_key
from common_operations.domain.workflow_types import (
    AWAIT_UPLOAD_ACTIVITY,
    BULK_INPUT_ERROR,
    BULK_TOO_MANY_ERRORS,
    EXPORT_ACTIVITY,
    IMPORT_ACTIVITY,
    UPLOAD_MISSING_ERROR,
    AwaitUploadInput,
    BulkJobInput,
    BulkJobResult,
)
from common_operations.infra.formats import (
    FileFormatError,
    SourceRow,
    iter_csv,
    iter_jsonl,
    open_writer,
    sniff_csv,
    sniff_jsonl,
    xlsx_to_csv,
)
from common_operations.infra.sinks.chunks import ChunkSink, ChunkWrite, RowSource, SinkRegistry
from common_operations.infra.storage.base import ObjectWriter, Storage

log = logging.getLogger(__name__)

T = TypeVar("T")


class CopyCsv(Protocol):
    """A source that writes its selected rows as CSV itself (a Postgres table: ``COPY``)."""

    async def __call__(self, filters: list[Any], output: Callable[[bytes], Awaitable[None]]) -> int:
        """Stream the rows as CSV, header first, to ``output``; how many rows."""
        ...


@dataclass(slots=True)
class BulkContext:
    """What the bulk activities work with."""

    storage: Storage
    jobs: BulkRepository
    entities: Mapping[str, EntitySpec]
    sinks: SinkRegistry
    chunk_rows: int = 5000


def _input_error(message: str, **details: Any) -> ApplicationError:
    """A problem with the job's input that no retry can fix: the task fails with ``message``."""
    return ApplicationError(message, details, type=BULK_INPUT_ERROR, non_retryable=True)


def _cancel_requested() -> bool:
    details = activity.cancellation_details()
    return details is not None and details.cancel_requested


async def _thread(fn: Callable[..., T], *args: Any) -> T:
    return await asyncio.to_thread(fn, *args)


class _Counts:
    """Cumulative counts of a job and a throttle for mirroring them."""

    def __init__(self, inp: BulkJobInput, jobs: BulkRepository) -> None:
        self.inp = inp
        self.jobs = jobs
        self.total = 0
        self.processed = 0
        self.success = 0
        self.failed = 0
        self._last_write = 0.0

    def as_tuple(self) -> tuple[int, int, int, int]:
        return (max(self.total, self.processed), self.processed, self.success, self.failed)

    async def report(self, note: str, *, force: bool = False) -> None:
        """Heartbeat the counts; mirror them at most once per progress interval."""
        activity.heartbeat(list(self.as_tuple()))
        now = time.monotonic()
        if not force and now - self._last_write < self.inp.progress_interval_seconds:
            return
        self._last_write = now
        total, processed, success, failed = self.as_tuple()
        message = note or f"processed {processed}/{total} records ({success} ok, {failed} failed)"
        await self.jobs.write_progress(
            self.inp.task_id, self.inp.owner, self.inp.seq, self.as_tuple(), message
        )

    def result(
        self, *, files: dict[str, Any] | None = None, message: str = "", stopped: bool = False
    ) -> BulkJobResult:
        total, processed, success, failed = self.as_tuple()
        return BulkJobResult(
            total_records=total,
            processed_records=processed,
            success_records=success,
            failed_records=failed,
            files=files or {},
            message=message,
            stopped=stopped,
        )


class _HashingWriter:
    """Counts and hashes what passes to the object being written (the export's manifest)."""

    def __init__(self, out: ObjectWriter) -> None:
        self._out = out
        self.sha256 = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes, /) -> int:
        self.sha256.update(data)
        self.size += len(data)
        return self._out.write(data)


class _OpenWrite:
    """A storage write driven from the event loop: entered, written and closed in worker threads."""

    def __init__(self, cm: AbstractContextManager[ObjectWriter]) -> None:
        self._cm = cm

    async def __aenter__(self) -> ObjectWriter:
        return await _thread(self._cm.__enter__)

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        # Shielded: an object half written by a cancelled job must still be aborted (not left).
        await asyncio.shield(_thread(self._cm.__exit__, exc_type, exc, tb))


@dataclass(slots=True)
class _Readable:
    """The file an import reads, once any conversion is done: a line-based format and its layout."""

    key: str
    fmt: str  # "csv" or "jsonl"
    header: list[str]
    data_offset: int
    size: int
    delimiter: str = ","
    encoding: str = "utf-8"
    layout: Any = None
    # Format, name and stem of the user's file (the result file mirrors it).
    original_fmt: str = "csv"
    name: str = "import"
    files: dict[str, Any] = field(default_factory=dict)

    def rows(self, stream: BinaryIO, offset: int, first_row: int) -> Iterator[SourceRow]:
        if self.fmt == "jsonl":
            return iter_jsonl(stream, header=self.header, offset=offset, first_row_no=first_row)
        return iter_csv(stream, self.layout, offset=offset, first_row_no=first_row)


class BulkActivities:
    """The activities of built-in import and export tasks (constructor injection)."""

    def __init__(self, ctx: BulkContext) -> None:
        """Work with ``ctx``'s storage, databases and entity declarations."""
        self._ctx = ctx

    @activity.defn(name=AWAIT_UPLOAD_ACTIVITY)
    async def await_upload(self, inp: AwaitUploadInput) -> int:
        """Wait until the task's input file is completely uploaded; its size.

        Raises:
            ApplicationError: the file did not arrive before its upload URL expired, is empty, or is
                larger than allowed (not retried).
        """
        while True:
            info = await _thread(self._ctx.storage.stat, inp.key)
            if info is not None:
                if info.size == 0:
                    raise _input_error(
                        "the uploaded file is empty (0 bytes); upload the file again with a new task"
                    )
                if info.size > inp.max_size:
                    await _thread(self._ctx.storage.delete_prefix, inp.key)
                    raise _input_error(
                        f"the uploaded file has {info.size} bytes, more than the limit of {inp.max_size}"
                    )
                return info.size
            now = datetime.now(UTC)
            if now >= inp.expires_at:
                raise ApplicationError(
                    "the input file was not uploaded before its upload URL expired at "
                    + inp.expires_at.isoformat(),
                    type=UPLOAD_MISSING_ERROR,
                    non_retryable=True,
                )
            activity.heartbeat()
            await asyncio.sleep(min(1.0, (inp.expires_at - now).total_seconds()))

    @activity.defn(name=IMPORT_ACTIVITY)
    async def run_import(self, inp: BulkJobInput) -> BulkJobResult:
        """Import the task's file into its entity's sink, resuming from the last committed chunk."""
        job = _ImportJob(self._ctx, inp)
        try:
            return await job.run()
        except asyncio.CancelledError:
            if not _cancel_requested():
                raise  # a worker shutting down: the activity is retried elsewhere and resumes
            return job.counts.result(
                stopped=True,
                message=f"{job.counts.processed} rows committed before the cancellation stay written",
            )

    @activity.defn(name=EXPORT_ACTIVITY)
    async def run_export(self, inp: BulkJobInput) -> BulkJobResult:
        """Export the entity's rows (filtered) into a file in storage, with a manifest."""
        job = _ExportJob(self._ctx, inp)
        try:
            return await job.run()
        except asyncio.CancelledError:
            if not _cancel_requested():
                raise
            return job.counts.result(stopped=True, message="export stopped; no file was stored")


def _entity(ctx: BulkContext, name: str) -> EntitySpec:
    entity = ctx.entities.get(name)
    if entity is None:
        raise _input_error(f"unknown entityType {name!r}; declared: {', '.join(sorted(ctx.entities))}")
    return entity


class _ImportJob:
    def __init__(self, ctx: BulkContext, inp: BulkJobInput) -> None:
        self.ctx = ctx
        self.inp = inp
        self.counts = _Counts(inp, ctx.jobs)
        # One job per task, across its attempts: a retried import (after a sink outage, say)
        # resumes after its last committed chunk instead of applying those rows again.
        self.job_id = inp.task_id
        # The next chunk's number (continues after the checkpoint when the job resumes).
        self._chunk_no = 0

    async def run(self) -> BulkJobResult:
        try:
            opts = import_options(self.inp.params, (self.inp.input_file or {}).get("name"))
        except DomainError as err:
            raise _input_error(err.message) from None
        entity = _entity(self.ctx, self.inp.entity_type)
        try:
            src = await self._readable(opts)
            converter = RowConverter(entity, src.header)
        except FileFormatError as err:
            raise _input_error(err.message, code=err.code) from None
        except HeaderInvalid as err:
            raise _input_error(err.message, code=err.code, **err.details) from None
        try:
            sink = await self.ctx.sinks.chunk_sink(entity, converter.fields)
        except ValueError as err:  # the entity's sink cannot take imports: no retry changes that
            raise _input_error(str(err)) from None
        offset, next_row = await self._resume(sink, src)
        if next_row is not None:
            try:
                await self._import_rows(src, converter, sink, opts, offset, next_row)
            except FileFormatError as err:
                stop = f"{err.message}; {self.counts.processed} rows before it were imported"
                files = await self._result_file(src)
                raise ApplicationError(
                    stop,
                    {"code": err.code, "counts": list(self.counts.as_tuple()), "files": files},
                    type=BULK_INPUT_ERROR,
                    non_retryable=True,
                ) from None
        if self.counts.processed == 0:
            raise _input_error("the file has a header but no data rows", code="NO_ROWS")
        self.counts.total = self.counts.processed
        files = {**src.files, **await self._result_file(src)}
        await self.counts.report("", force=True)
        verb = "validated (dry run, nothing written)" if opts.dry_run else "imported"
        c = self.counts
        return c.result(
            files=files,
            message=f"{verb} {c.success} of {c.processed} rows into {self.inp.entity_type}; "
            f"{c.failed} rows failed",
        )

    async def _resume(self, sink: ChunkSink, src: _Readable) -> tuple[int, int | None]:
        """Where reading starts and the counts so far; next_row None when every chunk is in."""
        cp = await sink.checkpoint(self.job_id)
        if cp is None:
            await self.ctx.jobs.clear_rejections(self.inp.task_id)
            return src.data_offset, 1
        # The chunk committed last may have been cut off before its rejections reached the
        # service database: the sink's checkpoint holds them too.
        await self.ctx.jobs.replace_rejections(self.inp.task_id, cp.first_row, cp.next_row - 1, cp.rejections)
        self.counts.processed = cp.processed
        self.counts.failed = await self.ctx.jobs.failed_before(self.inp.task_id, cp.next_row)
        self.counts.success = self.counts.processed - self.counts.failed
        self._chunk_no = cp.chunk_no + 1
        activity.logger.info(
            "import %s resumes at row %d (byte %d)", self.job_id, cp.next_row, cp.next_offset
        )
        if cp.done:
            return cp.next_offset, None
        return cp.next_offset, cp.next_row

    async def _import_rows(
        self,
        src: _Readable,
        converter: RowConverter,
        sink: ChunkSink,
        opts: ImportOptions,
        offset: int,
        next_row: int,
    ) -> None:
        chunk_rows = self.ctx.chunk_rows
        with self.ctx.storage.open_read(src.key, offset) as stream:
            rows = src.rows(stream, offset, next_row)
            convert = converter.convert
            width = len(src.header)

            def take() -> tuple[list[tuple[int, tuple[Any, ...]]], list[RowRejection], int, int, int, bool]:
                good: list[tuple[int, tuple[Any, ...]]] = []
                bad: list[RowRejection] = []
                first = last = -1
                end = -1
                for n, row in enumerate(rows, 1):
                    if first < 0:
                        first = row.row_no
                    last, end = row.row_no, row.end_offset
                    if row.problem is not None:
                        bad.append(RowRejection(row.row_no, row.problem, None, row.detail or row.problem))
                    elif len(row.values) != width:
                        bad.append(
                            RowRejection(
                                row.row_no,
                                "RAGGED_ROW",
                                None,
                                f"{len(row.values)} fields, the header has {width}",
                            )
                        )
                    else:
                        try:
                            good.append((row.row_no, convert(row.values)))
                        except RowInvalid as err:
                            bad.append(RowRejection(row.row_no, err.code, err.field, err.message))
                    if n >= chunk_rows:
                        return good, bad, first, last, end, False
                return good, bad, first, last, end, True

            pending: asyncio.Future[Any] | None = asyncio.ensure_future(_thread(take))
            try:
                while True:
                    assert pending is not None
                    good, bad, first, last, end, eof = await pending
                    pending = None
                    if first < 0:
                        # Nothing left (the file ended on a chunk boundary): mark the job done.
                        await sink.write_chunk(
                            ChunkWrite(
                                job_id=self.job_id,
                                chunk_no=self._chunk_no,
                                first_row=next_row,
                                last_row=next_row - 1,
                                end_offset=offset,
                                rows=[],
                                rejected=[],
                                mode=opts.mode,
                                processed=self.counts.processed,
                                done=True,
                                dry_run=opts.dry_run,
                            )
                        )
                        return
                    if not eof:
                        pending = asyncio.ensure_future(
                            _thread(take)
                        )  # read ahead while this chunk is written
                    processed = self.counts.processed + (last - first + 1)

                    async def commit(
                        first: int = first,
                        last: int = last,
                        end: int = end,
                        good: Any = good,
                        bad: Any = bad,
                        processed: int = processed,
                        eof: bool = eof,
                    ) -> None:
                        rejected = await sink.write_chunk(
                            ChunkWrite(
                                job_id=self.job_id,
                                chunk_no=self._chunk_no,
                                first_row=first,
                                last_row=last,
                                end_offset=end,
                                rows=good,
                                rejected=bad,
                                mode=opts.mode,
                                processed=processed,
                                done=eof,
                                dry_run=opts.dry_run,
                            )
                        )
                        all_bad = sorted([*bad, *rejected], key=lambda r: r.row_no)
                        await self.ctx.jobs.replace_rejections(self.inp.task_id, first, last, all_bad)
                        self._chunk_no += 1
                        c = self.counts
                        c.processed = processed
                        c.failed += len(all_bad)
                        c.success = c.processed - c.failed

                    # A cancel lets the chunk being written finish (commit and bookkeeping), so the
                    # counts the job answers with are exactly what the sink holds.
                    chunk = asyncio.ensure_future(commit())
                    try:
                        await asyncio.shield(chunk)
                    except asyncio.CancelledError:
                        with suppress(Exception):
                            await chunk
                        raise
                    offset, next_row = end, last + 1
                    c = self.counts
                    if not eof and src.size and end > 0:
                        # Rows still to come, estimated from the bytes still to read.
                        c.total = c.processed + int(
                            (src.size - end) * c.processed / max(1, end - src.data_offset)
                        )
                    await c.report("")
                    if (why := too_many_errors(opts, c.processed, c.failed)) is not None:
                        files = await self._result_file(src)
                        raise ApplicationError(
                            f"import stopped: {why}; {c.success} rows before it were imported",
                            {"counts": list(c.as_tuple()), "files": files},
                            type=BULK_TOO_MANY_ERRORS,
                            non_retryable=True,
                        )
                    if eof:
                        return
            finally:
                if pending is not None:
                    pending.cancel()
                    with suppress(BaseException):
                        await pending

    async def _readable(self, opts: ImportOptions) -> _Readable:
        """The input as a line-based file: the upload, its CSV conversion (XLSX), or failed rows.

        Failed rows are those of the source task, when this import retries them without a new file.
        """
        storage = self.ctx.storage
        inp = self.inp.input_file
        if inp is None and opts.source_task_id:
            return await self._failed_rows_of(opts.source_task_id)
        if inp is None:
            raise _input_error("the import has no input file")
        name = str(inp.get("name") or "import")
        fmt = opts.format or "csv"
        key = str(inp["key"])
        if fmt == "xlsx":
            staging = f"{self.inp.task_id}/staging/input.csv"
            if await _thread(storage.stat, staging) is None:
                await self._xlsx_to_csv(key, staging, opts.sheet)
            src = await self._sniff(staging, "csv", None, "utf-8")
            src.original_fmt = "xlsx"
        else:
            src = await self._sniff(key, fmt, opts.delimiter, opts.encoding)
            src.original_fmt = fmt
        src.name = name
        return src

    async def _sniff(self, key: str, fmt: str, delimiter: str | None, encoding: str | None) -> _Readable:
        storage = self.ctx.storage
        info = await _thread(storage.stat, key)
        if info is None:
            raise _input_error("the input file is missing from storage")

        def sniff() -> _Readable:
            with storage.open_read(key, 0) as stream:
                if fmt == "jsonl":
                    header, offset = sniff_jsonl(stream)
                    return _Readable(key=key, fmt="jsonl", header=header, data_offset=offset, size=info.size)
                layout = sniff_csv(stream, delimiter=delimiter, encoding=encoding)
                return _Readable(
                    key=key,
                    fmt="csv",
                    header=list(layout.header),
                    data_offset=layout.data_offset,
                    size=info.size,
                    delimiter=layout.delimiter,
                    encoding=layout.encoding,
                    layout=layout,
                )

        return await _thread(sniff)

    async def _xlsx_to_csv(self, key: str, staging: str, sheet: str | int | None) -> None:
        storage = self.ctx.storage

        def convert() -> None:
            # A workbook is a zip: it needs random access, so it is copied to a temporary file.
            with tempfile.TemporaryDirectory(prefix="co-xlsx-") as tmp:
                path = Path(tmp) / "input.xlsx"
                with storage.open_read(key, 0) as src, path.open("wb") as dst:
                    while chunk := src.read(1 << 20):
                        dst.write(chunk)
                with storage.open_write(staging, content_type=CONTENT_TYPES["csv"]) as out:
                    xlsx_to_csv(path, cast(BinaryIO, _WriterIO(out)), sheet=sheet)

        await _thread(convert)

    async def _failed_rows_of(self, source_task_id: str) -> _Readable:
        """A new input holding the rows the source import rejected, with the source's header."""
        src_job = _SourceOfRetry(self.ctx, source_task_id)
        key = f"{self.inp.task_id}/input/failed-rows-of-{source_task_id}.{{ext}}"
        return await src_job.failed_rows_into(key, self)

    async def _result_file(self, src: _Readable) -> dict[str, Any]:
        """Write the row-level result file: the input's rows and columns plus each row's outcome."""
        ext = src.original_fmt
        key = result_key(self.inp.task_id, ext)
        header = [*src.header, *RESULT_COLUMNS]
        stem = src.name.rsplit(".", 1)[0] if "." in src.name else src.name
        name = f"{stem}.result.{ext}"
        width = len(src.header)
        any_failed = self.counts.failed > 0
        written = 0

        def lines_of(batch: list[SourceRow], rejected: dict[int, RowRejection]) -> list[list[Any]]:
            lines: list[list[Any]] = []
            for row in batch:
                values = row.values if len(row.values) == width else [*row.values, *[None] * width][:width]
                rej = rejected.get(row.row_no)
                if rej is None:
                    lines.append([*values, "ok", None, None, None])
                else:
                    lines.append([*values, "failed", rej.code, rej.field, rej.message])
            return lines

        async with _OpenWrite(self.ctx.storage.open_write(key, content_type=CONTENT_TYPES[ext])) as out:
            writer = await _thread(open_writer, ext, _WriterIO(out), header)
            with self.ctx.storage.open_read(src.key, src.data_offset) as stream:
                rows = src.rows(stream, src.data_offset, 1)
                last_row = self.counts.processed
                seen = 0

                def take(n: int = 5000) -> list[SourceRow]:
                    # Never pulls a row past the last one imported: a job stopped by a bad row
                    # (e.g. a field too large) must not meet it again here.
                    nonlocal seen
                    batch: list[SourceRow] = []
                    if last_row < 1 or seen >= last_row:
                        return batch
                    for row in rows:
                        batch.append(row)
                        seen = row.row_no
                        if row.row_no >= last_row or len(batch) >= n:
                            break
                    return batch

                while batch := await _thread(take):
                    # One query per batch for its rejected rows (none at all when no row failed).
                    rejected = (
                        await self.ctx.jobs.rejections_between(
                            self.inp.task_id, batch[0].row_no, batch[-1].row_no
                        )
                        if any_failed
                        else {}
                    )
                    await _thread(_write_rows, writer, lines_of(batch, rejected))
                    written += len(batch)
                    activity.heartbeat(list(self.counts.as_tuple()))
            await _thread(writer.close)
        return {
            "result": {
                "key": key,
                "name": name,
                "contentType": CONTENT_TYPES[ext],
                "rows": written,
            }
        }


class _SourceOfRetry:
    """The rows a finished import rejected, as the input of the import that retries them."""

    def __init__(self, ctx: BulkContext, source_task_id: str) -> None:
        self.ctx = ctx
        self.source_task_id = source_task_id

    async def failed_rows_into(self, key_pattern: str, job: _ImportJob) -> _Readable:
        files = await self.ctx.jobs.task_files(self.source_task_id)
        src_input = files.get("input") if files else None
        if not isinstance(src_input, dict):
            raise _input_error(f"task {self.source_task_id} has no input file to take failed rows from")
        name = str(src_input.get("name") or "import")
        try:
            src_opts = import_options(await self.ctx.jobs.task_params(self.source_task_id), name)
        except DomainError as err:
            raise _input_error(err.message) from None
        source = _ImportJob(
            self.ctx,
            BulkJobInput(
                task_id=self.source_task_id,
                entity_type=job.inp.entity_type,
                attempt=0,
                owner="",
                seq=0,
                input_file=src_input,
            ),
        )
        readable_fmt = "jsonl" if src_opts.format == "jsonl" else "csv"
        if src_opts.format == "xlsx":
            # The source's CSV conversion is kept under its staging prefix, one per attempt.
            keys = await _thread(lambda: list(self.ctx.storage.iter_keys(f"{self.source_task_id}/staging/")))
            if not keys:
                raise _input_error(f"task {self.source_task_id}'s converted input is no longer stored")
            src = await source._sniff(sorted(keys)[-1], "csv", None, "utf-8")
        else:
            src = await source._sniff(
                str(src_input["key"]), readable_fmt, src_opts.delimiter, src_opts.encoding
            )
        key = key_pattern.format(ext=readable_fmt)
        if await _thread(self.ctx.storage.stat, key) is None:
            await self._write_failed_rows(src, key, readable_fmt)
        out = await job._sniff(key, readable_fmt, None, "utf-8")
        out.original_fmt = src_opts.format or "csv"
        out.name = name
        out.files = {
            "input": {
                "key": key,
                "name": f"failed-rows-of-{name}",
                "contentType": CONTENT_TYPES[readable_fmt],
            }
        }
        return out

    async def _write_failed_rows(self, src: _Readable, key: str, fmt: str) -> None:
        failed: dict[int, None] = {}
        async for rej in self.ctx.jobs.rejections(self.source_task_id):
            failed[rej.row_no] = None  # row numbers only: small next to the rows themselves
        if not failed:
            raise _input_error(f"task {self.source_task_id} has no failed rows to retry")
        last = max(failed)
        async with _OpenWrite(self.ctx.storage.open_write(key, content_type=CONTENT_TYPES[fmt])) as out:
            writer = await _thread(open_writer, fmt, _WriterIO(out), src.header)

            def copy() -> None:
                with self.ctx.storage.open_read(src.key, src.data_offset) as stream:
                    for row in src.rows(stream, src.data_offset, 1):
                        if row.row_no in failed:
                            writer.write_row(row.values)
                        if row.row_no >= last:
                            break
                writer.close()

            await _thread(copy)


class _ExportJob:
    def __init__(self, ctx: BulkContext, inp: BulkJobInput) -> None:
        self.ctx = ctx
        self.inp = inp
        self.counts = _Counts(inp, ctx.jobs)

    async def run(self) -> BulkJobResult:
        try:
            opts: ExportOptions = export_options(self.inp.params)
            entity = _entity(self.ctx, self.inp.entity_type)
            filters = parse_filters(entity, opts.filters)
        except DomainError as err:
            raise _input_error(err.message) from None
        try:
            source: RowSource = await self.ctx.sinks.row_source(entity)
        except ValueError as err:  # the entity's sink cannot serve exports
            raise _input_error(str(err)) from None
        self.counts.total = await source.count(filters)
        await self.counts.report("", force=True)
        fmt = opts.format
        key = output_key(self.inp.task_id, fmt)
        stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
        name = f"{entity.name}-export-{stamp}.{fmt}"
        header = [f.name for f in source.fields]
        copy_csv: CopyCsv | None = getattr(source, "copy_csv", None)
        async with _OpenWrite(self.ctx.storage.open_write(key, content_type=CONTENT_TYPES[fmt])) as out:
            hashing = _HashingWriter(out)
            if fmt == "csv" and copy_csv is not None:
                # A Postgres source formats CSV itself (COPY), far faster than row by row here.
                self.counts.processed = await self._copy(copy_csv, filters, hashing)
            else:
                await self._write(source, filters, fmt, header, opts.sheet, hashing)
        c = self.counts
        c.total = c.processed
        c.success = c.processed
        manifest = {
            "rows": c.processed,
            "bytes": hashing.size,
            "sha256": hashing.sha256.hexdigest(),
            "format": fmt,
            "entityType": entity.name,
            "filters": opts.filters,
            "createdAt": datetime.now(UTC).isoformat(),
        }
        await c.report("", force=True)
        return c.result(
            files={
                "output": {"key": key, "name": name, "contentType": CONTENT_TYPES[fmt], "manifest": manifest}
            },
            message=f"exported {c.processed} {entity.name} rows as {fmt} ({hashing.size} bytes)",
        )

    async def _copy(self, copy_csv: CopyCsv, filters: list[Any], out: _HashingWriter) -> int:
        """Export through the source's own CSV output; how many rows it wrote."""
        buffer = bytearray()
        lines = 0

        async def flush() -> None:
            nonlocal lines
            data = bytes(buffer)
            buffer.clear()
            await _thread(out.write, data)
            # Progress only (a quoted line break counts as a row here); COPY's count is exact.
            lines += data.count(b"\n")
            self.counts.processed = max(0, lines - 1)
            await self.counts.report("")

        async def output(data: bytes) -> None:
            buffer.extend(data)
            if len(buffer) >= 1 << 20:
                await flush()

        rows = await copy_csv(filters, output)
        if buffer:
            await flush()
        return rows

    async def _write(
        self,
        source: RowSource,
        filters: list[Any],
        fmt: str,
        header: list[str],
        sheet: str,
        out: _HashingWriter,
    ) -> None:
        """Export row by row through this service's writers (XLSX, JSONL, or a non-Postgres source)."""
        writer = await _thread(lambda: open_writer(fmt, _WriterIO(out), header, sheet_name=sheet))  # type: ignore[arg-type]
        try:
            # Closed even when the job stops half-way, so the snapshot's connection goes back.
            async with aclosing(source.stream(filters, batch_rows=self.ctx.chunk_rows)) as batches:
                async for batch in batches:
                    await _thread(_write_rows, writer, batch)
                    c = self.counts
                    c.processed += len(batch)
                    c.success = c.processed
                    await c.report("")
        finally:
            # Also on failure: an XLSX writer holds a temporary file until it is closed (the
            # object itself is then discarded, not stored).
            await asyncio.shield(_thread(writer.close))


def _write_rows(writer: Any, rows: Any) -> None:
    write = writer.write_row
    for row in rows:
        write(row)


class _WriterIO:
    """An ObjectWriter seen as the ``write(bytes)`` sink the format writers take."""

    def __init__(self, out: Any) -> None:
        self._out = out

    def write(self, data: bytes, /) -> int:
        self._out.write(data)
        return len(data)

    def flush(self) -> None:
        """Nothing to flush: the object writer buffers its own parts."""


__all__ = ["BulkActivities", "BulkContext"]
