"""REST read path on a million tasks: GET by id and filtered ListTasks vs a hello-world route.

    python -m bench.api [--rows 1000000] [--duration 10] [--connections 32] [--rounds 2]
        [--database-url URL [--reuse]] [--loop asyncio|uvloop] [--load-generator auto|wrk|python]

1. Postgres: ``--database-url`` / ``BENCH_DATABASE_URL`` (a fresh ``co_bench_<random>`` database,
   dropped at the end; with ``--reuse``, ``co_bench_api`` is kept and reloaded only if it holds
   fewer than ``--rows`` tasks) or embedded Postgres in a temporary directory. Migrated, then
   ``--rows`` task rows are loaded with ``COPY`` (asyncpg ``copy_records_to_table``, batches of
   50,000, one process per core) with a realistic spread of types, entities, statuses,
   requesters, dates and texts. By default the secondary indexes are dropped before and rebuilt
   after the load (``--index-mode keep`` loads with them in place), then ``VACUUM ANALYZE tasks``.
2. The REST API runs in a separate process (``python -m bench.serve_api``) against that database
   and a Temporal dev server (started here; GET/list never touch it).
3. Load (wrk if on PATH, else a multi-process Python generator), each scenario after a warm-up, in
   rounds: ``hello`` (``GET /health/live``), ``get`` (GET one task, cycling over 5,000 ids) and
   ``list`` (ListTasks cycling over selective filter combinations). Then each list filter alone at
   one connection, for its latency.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import multiprocessing
import os
import random
import subprocess
import sys
import time
import uuid
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict
from datetime import UTC, date, datetime, timedelta
from typing import Any
from urllib.parse import urlencode

import asyncpg

from bench import auth as bench_auth
from bench.common import (
    DATABASE_ENV,
    bench_database,
    cpu_seconds,
    database_name,
    exit_now,
    free_port,
    log,
    machine,
    median,
    postgres_backends,
    print_table,
    temporal_address,
    temporal_server,
    write_results,
)
from bench.loadgen import LoadResult, run_load, wrk_path
from common_operations.db.engine import migrate, with_database

TASKS = "/api/v1/operations/tasks"
HELLO = "/health/live"
REUSE_DATABASE = "co_bench_api"
BATCH = 50_000
SEED = 20261129
GET_IDS = 5_000
TARGET_GET_RATIO = 0.5
TARGET_LIST_P99_MS = 50.0

COLUMNS = (
    "id",
    "task_type",
    "entity_type",
    "status",
    "priority",
    "requested_by",
    "params",
    "file_name",
    "file_size",
    "input_file_url",
    "output_file_url",
    "total_records",
    "processed_records",
    "success_records",
    "failed_records",
    "progress_percentage",
    "scheduled_at",
    "started_at",
    "completed_at",
    "error_message",
    "retry_count",
    "max_retries",
    "created_at",
    "updated_at",
    "seq",
    "run_id",
)

TASK_TYPES = {
    "export": 20,
    "import": 20,
    "process": 12,
    "data_sync": 10,
    "report_generation": 8,
    "file_processing": 8,
    "order_processing": 8,
    "bulk_update": 6,
    "notification_send": 5,
    "cleanup": 3,
}
ENTITY_TYPES = {
    "products": 30,
    "orders": 20,
    "customers": 15,
    "inventory": 12,
    "prices": 8,
    "categories": 6,
    "suppliers": 5,
    "shipments": 4,
}
STATUSES = {"completed": 62, "failed": 10, "cancelled": 5, "processing": 8, "pending": 10, "scheduled": 5}
SERVICES = ["catalog", "orders", "pricing", "inventory", "crm", "storefront", "search", "reports", "erp"]
ERRORS = [
    "row {n}: invalid SKU 'AB-{n}'",
    "connection reset by peer while calling {svc}-service",
    "timeout after 300s waiting for the {svc} feed",
    "row {n}: price must be positive",
    "duplicate key value violates unique constraint on row {n}",
    "upstream {svc}-service answered 503 Service Unavailable",
    "file is not valid UTF-8 at byte {n}",
    "worker lost: no heartbeat from {svc}-worker",
]
FILE_TYPES = {"import", "export", "file_processing"}


def requesters() -> tuple[list[str], list[float]]:
    """200 requesters (users and services) with a skewed (Zipf-like) weight."""
    names = [f"svc-{s}" for s in SERVICES] + [f"user-{i:04d}" for i in range(1, 200 - len(SERVICES) + 1)]
    rng = random.Random(7)
    rng.shuffle(names)
    return names, [1 / (i + 1) ** 0.8 for i in range(len(names))]


def generate(rng: random.Random, n: int, now: datetime) -> list[tuple[Any, ...]]:
    """``n`` task rows in ``COLUMNS`` order (about 10 µs a row: ``random()`` rather than ``randrange``)."""
    types = rng.choices(list(TASK_TYPES), weights=list(TASK_TYPES.values()), k=n)
    entities = rng.choices(list(ENTITY_TYPES), weights=list(ENTITY_TYPES.values()), k=n)
    statuses = rng.choices(list(STATUSES), weights=list(STATUSES.values()), k=n)
    names, weights = requesters()
    who = rng.choices(names, weights=weights, k=n)
    rnd, bits = rng.random, rng.getrandbits
    span = 90 * 86400.0
    second = timedelta(seconds=1)
    days: dict[date, str] = {}  # "YYYYmmdd" of a date, formatted once
    rows = []
    for k in range(n):
        task_id = uuid.UUID(int=bits(128), version=4)
        task_type, entity, status = types[k], entities[k], statuses[k]
        created = now - rnd() * span * second
        file_name = file_size = input_url = output_url = None
        if task_type in FILE_TYPES:
            day = created.date()
            stamp = days.get(day) or days.setdefault(day, day.strftime("%Y%m%d"))
            file_name = f"{entity}-{stamp}-{int(rnd() * 1000):03d}.csv"
            file_size = 1_000 + int(rnd() * 50_000_000)
            if task_type != "export":
                input_url = f"s3://co-uploads/{task_id}/{file_name}"
        total = int(rnd() * 200_000)
        processed = success = failed = 0
        started = completed = scheduled = error = run_id = None
        seq = 0
        if status == "scheduled":
            scheduled = created + (3600 + int(rnd() * 167 * 3600)) * second
        else:
            started = created + (1 + int(rnd() * 60)) * second
            seq = 1 + int(rnd() * 7)
            if status in ("processing", "pending"):
                processed = int(rnd() * total) if status == "processing" else 0
                run_id = f"{bits(128):032x}"
                if status == "pending":
                    started = None
            else:
                completed = started + (1 + int(rnd() * 3600)) * second
                processed = total if status == "completed" else int(rnd() * total)
                if status == "failed":
                    msg = ERRORS[int(rnd() * len(ERRORS))]
                    error = msg.format(n=int(rnd() * 100_000), svc=SERVICES[int(rnd() * len(SERVICES))])
                if status == "completed" and task_type == "export":
                    output_url = f"s3://co-exports/{task_id}.csv"
        if processed:
            failed = int(rnd() * (processed // 50))
            success = processed - failed
        rows.append(
            (
                task_id,
                task_type,
                entity,
                status,
                int(rnd() * 3),
                who[k],
                f'{{"source": "bench", "batch": {int(rnd() * 10_000)}}}',
                file_name,
                file_size,
                input_url,
                output_url,
                total,
                processed,
                success,
                failed,
                min(100.0, processed * 100.0 / total) if total else 0.0,
                scheduled,
                started,
                completed,
                error,
                int(rnd() * 3) if status in ("failed", "completed") else 0,
                3,
                created,
                completed or started or created,
                seq,
                run_id,
            )
        )
    return rows


async def secondary_indexes(conn: asyncpg.Connection) -> list[tuple[str, str]]:
    """(name, definition) of the ``tasks`` indexes that back no constraint."""
    rows = await conn.fetch(
        """
        SELECT i.relname AS name, pg_get_indexdef(x.indexrelid) AS definition
        FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid JOIN pg_class t ON t.oid = x.indrelid
        WHERE t.relname = 'tasks'
          AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conindid = x.indexrelid)
        ORDER BY i.relname
        """
    )
    return [(r["name"], r["definition"]) for r in rows]


def copy_share(url: str, worker: int, workers: int, rows: int, now: datetime) -> tuple[float, float]:
    """In a worker process: generate and COPY every ``workers``-th batch, from batch ``worker``.

    Batch ``b`` is generated from seed ``SEED + b``, so the data does not depend on ``workers``.

    Returns:
        (seconds generating, seconds copying) of this worker.
    """

    async def run() -> tuple[float, float]:
        conn = await asyncpg.connect(url)
        generating = copying = 0.0
        try:
            for b in range(worker, (rows + BATCH - 1) // BATCH, workers):
                t = time.perf_counter()
                batch = generate(random.Random(SEED + b), min(BATCH, rows - b * BATCH), now)
                generating += time.perf_counter() - t
                t = time.perf_counter()
                await conn.copy_records_to_table("tasks", records=batch, columns=COLUMNS)
                copying += time.perf_counter() - t
        finally:
            await conn.close()
        return generating, copying

    return asyncio.run(run())


async def build_indexes(url: str, definitions: list[str]) -> None:
    """Create the indexes on two connections at once: the trigram GIN one alone, the btrees together."""

    async def build(group: list[str]) -> None:
        conn = await asyncpg.connect(url)
        try:
            await conn.execute("SET maintenance_work_mem = '512MB'")
            for definition in group:
                await conn.execute(definition)
        finally:
            await conn.close()

    gin = [d for d in definitions if "USING gin" in d]
    await asyncio.gather(build(gin), build([d for d in definitions if d not in gin]))


async def load(url: str, rows: int, index_mode: str, workers: int) -> dict[str, Any]:
    """Fill ``tasks`` with ``rows`` generated rows using ``workers`` processes; returns the timings."""
    conn = await asyncpg.connect(url)
    timings: dict[str, Any] = {"rows": rows, "index_mode": index_mode, "workers": workers}
    try:
        await conn.execute("TRUNCATE tasks CASCADE")
        indexes = await secondary_indexes(conn)
        if index_mode == "rebuild":
            for name, _ in indexes:
                await conn.execute(f'DROP INDEX "{name}"')
        now = datetime.now(UTC)
        t0 = time.perf_counter()
        loop = asyncio.get_running_loop()
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            shares = await asyncio.gather(
                *(loop.run_in_executor(pool, copy_share, url, w, workers, rows, now) for w in range(workers))
            )
        timings["copy_wall_s"] = round(time.perf_counter() - t0, 1)
        timings["generate_cpu_s"] = round(sum(g for g, _ in shares), 1)
        timings["copy_call_s"] = round(sum(c for _, c in shares), 1)
        if index_mode == "rebuild":
            t = time.perf_counter()
            await build_indexes(url, [d for _, d in indexes])
            timings["index_build_s"] = round(time.perf_counter() - t, 1)
        t = time.perf_counter()
        await conn.execute("VACUUM ANALYZE tasks")
        timings["vacuum_analyze_s"] = round(time.perf_counter() - t, 1)
        timings["total_s"] = round(time.perf_counter() - t0, 1)
        timings["table_size"] = await conn.fetchval("SELECT pg_size_pretty(pg_total_relation_size('tasks'))")
    finally:
        await conn.close()
    return timings


async def loaded_rows(url: str) -> int:
    """Rows of the last complete load recorded in the table's comment (0 if none or unfinished)."""
    conn = await asyncpg.connect(url)
    try:
        note = await conn.fetchval("SELECT obj_description(to_regclass('tasks'), 'pg_class')")
    finally:
        await conn.close()
    prefix = "co-bench: loaded "
    return int(note[len(prefix) :].split()[0]) if note and note.startswith(prefix) else 0


async def recreate_database(url: str) -> None:
    """Drop and create the database of ``url`` (a half-finished load may have dropped indexes)."""
    name = database_name(url)
    conn = await asyncpg.connect(with_database(url, "postgres"))
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()


async def prepare(url: str, rows: int, reuse: bool, index_mode: str, workers: int) -> dict[str, Any]:
    """Migrate and load, unless a reused database holds a complete load of at least ``rows`` rows."""
    if reuse:
        present = await loaded_rows(url)
        if present >= rows:
            log(f"reusing {present:,} rows")
            return {"rows": present, "reused": True}
        await recreate_database(url)
    with contextlib.redirect_stdout(sys.stderr):  # Piccolo prints its migration report
        await migrate(url)
    log(f"loading {rows:,} rows (index mode {index_mode}, {workers} processes)")
    timings = await load(url, rows, index_mode, workers)
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(f"COMMENT ON TABLE tasks IS 'co-bench: loaded {rows} rows'")
    finally:
        await conn.close()
    log(f"loaded: {timings}")
    return timings


async def scenarios(url: str) -> tuple[list[str], dict[str, str], dict[str, str]]:
    """Paths for ``get``, the selective ``list`` filters (the mix), and broad ones (one client only)."""
    conn = await asyncpg.connect(url)
    try:
        ids = await conn.fetch(f"SELECT id FROM tasks TABLESAMPLE SYSTEM (1) LIMIT {GET_IDS}")
        newest: datetime = await conn.fetchval("SELECT max(created_at) FROM tasks")
        # A requester of middling popularity: the 20th busiest.
        who = await conn.fetchval(
            "SELECT requested_by FROM tasks GROUP BY requested_by ORDER BY count(*) DESC OFFSET 19 LIMIT 1"
        )
    finally:
        await conn.close()
    get = [f"{TASKS}/{r['id']}" for r in ids]
    day = newest.replace(hour=0, minute=0, second=0, microsecond=0)
    week_ago = (day - timedelta(days=7)).strftime("%Y-%m-%dT%H:%M:%SZ")
    six_days_ago = (day - timedelta(days=6)).strftime("%Y-%m-%dT%H:%M:%SZ")

    def q(**params: Any) -> str:
        return f"{TASKS}?{urlencode(params | {'pageSize': 20})}"

    selective = {
        "status+type": q(status="processing", taskType="export"),
        "requestedBy": q(requestedBy=who),
        "dateRange": q(startDate=week_ago, endDate=six_days_ago),
        "type+dateRange": q(taskType="import", startDate=week_ago, endDate=six_days_ago),
        "entity+status": q(entityType="orders", status="failed"),
        "search": q(search="connection reset"),
        "requestedBy+status": q(requestedBy=who, status="completed"),
    }
    broad = {
        "status=completed (62% of rows)": q(status="completed"),
        "no filter": q(),
    }
    return get, selective, broad


def start_api(url: str, address: str, port: int, args: argparse.Namespace) -> subprocess.Popen[str]:
    """``python -m bench.serve_api`` in its own process; returns once it prints ``ready``."""
    command = [sys.executable, "-m", "bench.serve_api", "--database-url", url, "--temporal-address", address]
    command += ["--port", str(port), "--loop", args.loop]
    if args.pool_max:
        command += ["--pool-max", str(args.pool_max)]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()  # blocks until ready (or the process died)
    if line.strip() != "ready":
        proc.kill()
        raise RuntimeError(f"bench.serve_api did not start (exit {proc.wait()})")
    return proc


def measure(
    base_url: str,
    paths: list[str],
    connections: int,
    duration: float,
    tool: str,
    server_pid: int,
    database: str,
    warmup: float,
) -> dict[str, Any]:
    """Warm up, then one timed load run with the server's and Postgres' CPU per request."""
    # Every request carries the bearer token the service verifies (hello too: it ignores it).
    headers = bench_auth.headers()
    if warmup > 0:
        run_load(base_url, paths, connections, warmup, tool, headers)
    backends = postgres_backends(database)
    cpu0 = cpu_seconds(server_pid)
    pg0 = sum(cpu_seconds(p) for p in backends)
    result: LoadResult = run_load(base_url, paths, connections, duration, tool, headers)
    server_cpu = cpu_seconds(server_pid) - cpu0
    pg_cpu = sum(cpu_seconds(p) for p in backends) - pg0
    data = asdict(result)
    n = max(1, result.requests)
    data["server_cpu_ms_per_req"] = round(server_cpu / n * 1000, 3)
    data["postgres_cpu_ms_per_req"] = round(pg_cpu / n * 1000, 3)
    return data


async def main(args: argparse.Namespace) -> int:
    """Set up, measure, report."""
    tool = args.load_generator
    if tool == "auto":
        tool = "wrk" if wrk_path() else "python"
    if tool == "wrk" and not wrk_path():
        raise SystemExit("wrk is not on PATH: apt-get install -y wrk (or --load-generator python)")
    reuse_name = REUSE_DATABASE if args.reuse and args.database_url else None
    results: dict[str, Any] = {"rounds": [], "one_client": {}}
    log("starting the Temporal dev server and the database")
    async with temporal_server() as env, bench_database(args.database_url, name=reuse_name) as url:
        load_info = await prepare(url, args.rows, reuse_name is not None, args.index_mode, args.load_workers)
        get_paths, selective, broad = await scenarios(url)
        port = free_port()
        base_url = f"http://127.0.0.1:{port}"
        api = await asyncio.to_thread(start_api, url, temporal_address(env), port, args)
        database = database_name(url)
        try:
            mix = list(selective.values())
            scenario_paths = {"hello": [HELLO], "get": get_paths, "list": mix}
            for rnd in range(1, args.rounds + 1):
                for name, paths in scenario_paths.items():
                    log(f"round {rnd}: {name}, {args.connections} connections, {args.duration:g} s")
                    r = await asyncio.to_thread(
                        measure, base_url, paths, args.connections, args.duration, tool, api.pid, database, 2
                    )
                    results["rounds"].append({"round": rnd, "scenario": name} | r)
                    log(f"  {r['rps']:.0f} req/s, p50 {r['p50_ms']:.1f} ms, p99 {r['p99_ms']:.1f} ms")
            one = {"hello": [HELLO], "get": get_paths, "list (mix)": mix}
            one |= {f"list {k}": [v] for k, v in selective.items()}
            one |= {f"list {k}": [v] for k, v in broad.items()}
            for name, paths in one.items():
                log(f"one client: {name}")
                results["one_client"][name] = await asyncio.to_thread(
                    measure, base_url, paths, 1, args.one_client_duration, tool, api.pid, database, 1
                )
        finally:
            api.terminate()
            try:
                api.wait(timeout=15)
            except subprocess.TimeoutExpired:
                api.kill()
    return report(args, tool, load_info, selective, broad, results)


def report(
    args: argparse.Namespace,
    tool: str,
    load_info: dict[str, Any],
    selective: dict[str, str],
    broad: dict[str, str],
    results: dict[str, Any],
) -> int:
    """Print the tables, write the JSON."""
    rounds = results["rounds"]
    print()
    print(f"load: {load_info}")
    print(f"\n{args.connections} connections, {args.duration:g} s per run ({tool}):")
    print_table(
        ["round", "scenario", "req/s", "p50 ms", "p99 ms", "errors", "server cpu ms/req", "pg cpu ms/req"],
        [
            [
                r["round"],
                r["scenario"],
                f"{r['rps']:.0f}",
                f"{r['p50_ms']:.2f}",
                f"{r['p99_ms']:.2f}",
                r["errors"],
                f"{r['server_cpu_ms_per_req']:.3f}",
                f"{r['postgres_cpu_ms_per_req']:.3f}",
            ]
            for r in rounds
        ],
    )
    med = {
        name: {
            k: median(r[k] for r in rounds if r["scenario"] == name)
            for k in ("rps", "p50_ms", "p99_ms", "server_cpu_ms_per_req")
        }
        for name in ("hello", "get", "list")
    }
    ratio = med["get"]["rps"] / med["hello"]["rps"] if med["hello"]["rps"] else 0.0
    list_ratio = med["list"]["rps"] / med["hello"]["rps"] if med["hello"]["rps"] else 0.0
    print("\none client (connections=1):")
    print_table(
        ["scenario", "req/s", "p50 ms", "p99 ms", "max ms", "errors", "server cpu ms/req", "pg cpu ms/req"],
        [
            [
                name,
                f"{r['rps']:.0f}",
                f"{r['p50_ms']:.2f}",
                f"{r['p99_ms']:.2f}",
                f"{r['max_ms']:.1f}",
                r["errors"],
                f"{r['server_cpu_ms_per_req']:.3f}",
                f"{r['postgres_cpu_ms_per_req']:.3f}",
            ]
            for name, r in results["one_client"].items()
        ],
    )
    one = results["one_client"]
    selective_p99 = {k: one[f"list {k}"]["p99_ms"] for k in selective}
    worst = max(selective_p99, key=lambda k: selective_p99[k])
    mix_p99 = one["list (mix)"]["p99_ms"]
    errors = sum(r["errors"] for r in rounds) + sum(r["errors"] for r in one.values())
    get_ok = ratio >= TARGET_GET_RATIO
    list_ok = mix_p99 < TARGET_LIST_P99_MS and selective_p99[worst] < TARGET_LIST_P99_MS
    print()
    print(
        f"medians: hello {med['hello']['rps']:.0f} req/s, get {med['get']['rps']:.0f} req/s, "
        f"list {med['list']['rps']:.0f} req/s"
    )
    print(f"GET / hello-world: {ratio:.2f} (target >= {TARGET_GET_RATIO}: {'met' if get_ok else 'MISSED'})")
    print(f"list (mix) / hello-world: {list_ratio:.2f}")
    verdict = "met" if list_ok else "MISSED"
    print(
        f"filtered list p99 at one client: mix {mix_p99:.1f} ms, worst filter {worst!r} "
        f"{selective_p99[worst]:.1f} ms (target < {TARGET_LIST_P99_MS:g} ms: {verdict})"
    )
    if errors:
        print(f"WARNING: {errors} failed or non-2xx requests")
    path = write_results(
        "api",
        {
            "benchmark": "api",
            "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "machine": machine(),
            "params": {k: v for k, v in vars(args).items() if k != "database_url"}
            | {"database": "embedded" if args.database_url is None else "server", "tool": tool},
            "load": load_info,
            "filters": {"selective": selective, "broad": broad},
            "rounds": rounds,
            "one_client": one,
            "medians": med,
            "get_to_hello_ratio": ratio,
            "list_to_hello_ratio": list_ratio,
            "target_get_ratio": TARGET_GET_RATIO,
            "target_get_ratio_met": get_ok,
            "list_p99_one_client_ms": {"mix": mix_p99} | selective_p99,
            "target_list_p99_ms": TARGET_LIST_P99_MS,
            "target_list_p99_met": list_ok,
            "errors": errors,
        },
    )
    print(f"results: {path}")
    return 0 if errors == 0 else 1


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(prog="python -m bench.api", description=__doc__.split("\n")[0])
    p.add_argument("--rows", type=int, default=1_000_000, help="tasks to load (default 1,000,000)")
    p.add_argument("--duration", type=float, default=10.0, help="seconds per timed run (default 10)")
    p.add_argument("--connections", type=int, default=32, help="concurrent connections (default 32)")
    p.add_argument("--rounds", type=int, default=2, help="hello/get/list rounds (default 2)")
    p.add_argument("--one-client-duration", type=float, default=5.0, help="seconds per one-client run")
    p.add_argument(
        "--database-url",
        default=os.environ.get(DATABASE_ENV),
        help=f"Postgres server (default ${DATABASE_ENV}, else embedded Postgres)",
    )
    p.add_argument("--reuse", action="store_true", help=f"keep {REUSE_DATABASE} loaded between runs")
    p.add_argument("--index-mode", choices=("rebuild", "keep"), default="rebuild")
    p.add_argument(
        "--load-workers", type=int, default=os.cpu_count() or 2, help="processes generating and copying rows"
    )
    p.add_argument("--load-generator", choices=("auto", "wrk", "python"), default="auto")
    p.add_argument("--loop", choices=("asyncio", "uvloop"), default="uvloop", help="API process loop")
    p.add_argument("--pool-max", type=int, default=0, help="API asyncpg pool size (default: the service's)")
    args = p.parse_args(argv)
    if min(args.rows, args.connections, args.rounds) < 1 or min(args.duration, args.one_client_duration) <= 0:
        p.error("--rows, --connections, --rounds and the durations must be positive")
    if args.reuse and not args.database_url:
        p.error("--reuse needs --database-url (embedded Postgres is temporary)")
    return args


if __name__ == "__main__":
    code = 1
    try:
        code = asyncio.run(main(parse_args()))
    except Exception as err:
        import traceback

        traceback.print_exc()
        print(f"benchmark failed: {err}", file=sys.stderr)
    exit_now(code)
