"""Task lifecycle throughput: REST-created delegated no-op tasks vs bare Temporal workflows.

    python -m bench.lifecycle [--tasks 300] [--concurrency 50] [--rounds 2] [--database-url URL]

One process hosts everything, as ``common-operations run`` does: the Temporal dev server (child
process), the service's worker (``build_worker``), the "other service's" worker serving the no-op
delegated activity, a worker for the baseline, the REST API (uvicorn on a free 127.0.0.1 port) and
the load (httpx). The runtime is opened ``with_worker=True`` as ``run`` opens it, so the service
starts runs eagerly on its in-process worker; the baseline asks for eager starts on the same client
(``--no-eager``: neither). Postgres is ``--database-url`` / ``BENCH_DATABASE_URL`` (a fresh database
is created and dropped) or embedded Postgres in a temporary directory.

- **baseline**: N ``BenchBaselineWorkflow`` (one no-op activity each) started through the same
  Temporal client, at most C starts in flight, and awaited (``handle.result()``).
- **ours**: N ``POST /api/v1/operations/tasks`` of the delegated ``bench_noop`` type, at most C in
  flight, run to ``completed``; completion is seen by polling ``ListTasks`` (``status=completed``,
  ``pageSize=1``, its ``total``) every 0.2 s.

Both are timed from the first start/POST to the last completion; they alternate (baseline, ours,
baseline, ours, ...) after a warm-up of each, and the ratio is median(ours) / median(baseline).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import httpx
import uvloop
from temporalio.client import Client
from temporalio.worker import Worker

from bench import auth as bench_auth
from bench.auth import auth_settings
from bench.baseline import NOOP_ACTIVITY, BaselineWorkflow, baseline_noop, noop_task
from bench.common import (
    CLIENT_KEEPALIVE_EXPIRY,
    DATABASE_ENV,
    CpuMeter,
    Profiler,
    bench_database,
    child_pid,
    database_name,
    enable_bytecode_cache,
    exit_now,
    free_port,
    lag_summary,
    load_average,
    log,
    machine,
    median,
    percentile,
    print_table,
    temporal_address,
    temporal_server,
    watch_loop_lag,
    write_results,
)
from common_operations.bootstrap import open_runtime
from common_operations.config import OperationsSettings, Settings, TaskTypeSettings
from common_operations.db.engine import migrate
from common_operations.domain.principal import Principal
from common_operations.domain.status import TaskStatus
from common_operations.domain.task import CreateTask, TaskQuery
from common_operations.infra.temporal import TaskWorkflows
from common_operations.services.tasks import TaskService
from common_operations.web.server import serve_http
from common_operations.worker import build_worker

TASKS = "/api/v1/operations/tasks"
TASK_TYPE = "bench_noop"
POLL_INTERVAL = 0.2
TARGET_RATIO = 0.7
LOUD_LAG_MS = 1000.0
PATHS = ("baseline", "ours", "service", "service-nosa")


@dataclass
class RunResult:
    """One timed run of one path."""

    path: str
    round: int
    tasks: int
    wall_s: float
    tasks_per_s: float
    cpu_s: dict[str, float]
    create_p50_ms: float | None = None
    create_p99_ms: float | None = None
    created_s: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def bench_settings(
    database_url: str, address: str, task_queue: str, delegate_queue: str, *, eager_start: bool = True
) -> Settings:
    """Service settings with one delegated no-op task type (like ``tests.conftest.make_settings``)."""
    types = {
        TASK_TYPE: TaskTypeSettings(
            kind="delegated",
            task_queue=delegate_queue,
            activity=NOOP_ACTIVITY,
            heartbeat_timeout=30,
            retry={"maximum_attempts": 3, "initial_interval": 0.5, "maximum_interval": 2},
        )
    }
    return Settings(
        database_url=database_url,
        temporal_address=address,
        temporal={
            "address": address,
            "task_queue": task_queue,
            "search_attributes": True,
            "eager_start": eager_start,
        },
        operations=OperationsSettings(task_types=types),
        **auth_settings(),
    )


async def run_baseline(
    client: Client, task_queue: str, n: int, concurrency: int, timeout: float, tag: str, *, eager: bool
) -> tuple[float, float]:
    """Start ``n`` baseline workflows (``concurrency`` starts in flight) and await them all.

    ``eager`` asks for eager start, as the service does when its worker shares the client.

    Returns:
        (wall seconds, seconds until every start was accepted).
    """
    gate = asyncio.Semaphore(concurrency)
    started_at: list[float] = []

    async def one(i: int) -> None:
        async with gate:
            handle = await client.start_workflow(
                BaselineWorkflow.run,
                str(i),
                id=f"bench-base-{tag}-{i}",
                task_queue=task_queue,
                request_eager_start=eager,
            )
            started_at.append(time.perf_counter())
        await handle.result()

    t0 = time.perf_counter()
    await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(n))), timeout=timeout)
    wall = time.perf_counter() - t0
    return wall, max(started_at) - t0


async def create_and_wait(
    create_one: Callable[[], Awaitable[None]],
    count: Callable[[TaskStatus], Awaitable[int]],
    n: int,
    concurrency: int,
    timeout: float,
) -> tuple[float, float, list[float]]:
    """Create ``n`` tasks (``concurrency`` in flight) and poll ``count`` until all are completed.

    Returns:
        (wall seconds, seconds until every create call returned, create latencies in seconds).
    """
    gate = asyncio.Semaphore(concurrency)
    latencies: list[float] = []

    async def create() -> None:
        async with gate:
            t = time.perf_counter()
            await create_one()
            latencies.append(time.perf_counter() - t)

    async def create_all() -> None:
        await asyncio.gather(*(create() for _ in range(n)))

    t0 = time.perf_counter()
    deadline = t0 + timeout
    creating = asyncio.create_task(create_all(), name="create-tasks")
    created_s: float | None = None
    try:
        while True:
            if creating.done():
                creating.result()  # a failed create ends the run now
                if created_s is None:
                    created_s = time.perf_counter() - t0
            if await count(TaskStatus.COMPLETED) >= n:
                break
            if time.perf_counter() > deadline:
                failed = await count(TaskStatus.FAILED)
                raise TimeoutError(f"not all {n} tasks completed within {timeout:g}s ({failed} failed)")
            await asyncio.sleep(POLL_INTERVAL)
        wall = time.perf_counter() - t0
        await creating
    finally:
        creating.cancel()
    return wall, created_s if created_s is not None else wall, latencies


async def run_ours(
    api: httpx.AsyncClient, poller: httpx.AsyncClient, n: int, concurrency: int, timeout: float, tag: str
) -> tuple[float, float, list[float]]:
    """Create ``n`` tasks through REST and poll ListTasks (``status=completed``) until all are done."""
    requested_by = f"bench-{tag}"
    body = {"taskType": TASK_TYPE, "entityType": "bench", "requestedBy": requested_by}
    headers = bench_auth.headers()

    async def create_one() -> None:
        resp = await api.post(TASKS, json=body, headers=headers)
        if resp.status_code != 201:
            raise RuntimeError(f"CreateTask answered {resp.status_code}: {resp.text[:300]}")

    async def count(status: TaskStatus) -> int:
        params = {"requestedBy": requested_by, "status": status.value, "pageSize": 1}
        resp = await poller.get(TASKS, params=params)
        if resp.status_code != 200:
            raise RuntimeError(f"ListTasks answered {resp.status_code}: {resp.text[:300]}")
        return int(resp.json()["total"])

    return await create_and_wait(create_one, count, n, concurrency, timeout)


async def run_service(
    service: TaskService, n: int, concurrency: int, timeout: float, tag: str
) -> tuple[float, float, list[float]]:
    """Diagnostic: the same tasks created by calling ``TaskService`` in-process (no HTTP at all)."""
    requested_by = f"bench-{tag}"
    caller = Principal(subject="bench", roles=frozenset({"admin"}))
    command = CreateTask(task_type=TASK_TYPE, entity_type="bench", requested_by=requested_by)

    async def create_one() -> None:
        await service.create_task(caller, command)

    async def count(status: TaskStatus) -> int:
        page = await service.repository.page(TaskQuery(requested_by=requested_by, status=status, page_size=1))
        return page.total

    return await create_and_wait(create_one, count, n, concurrency, timeout)


async def wait_http(base_url: str, timeout: float = 30.0) -> None:
    """Until ``GET /health/live`` answers 200."""
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient(base_url=base_url, timeout=2) as probe:
        while True:
            try:
                if (await probe.get("/health/live")).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"the REST API at {base_url} did not come up within {timeout:g}s")
            await asyncio.sleep(0.1)


async def main(args: argparse.Namespace) -> int:
    """Set up, run the rounds, print and save the results."""
    run = uuid.uuid4().hex[:8]
    if not args.env_bytecode and (prefix := enable_bytecode_cache()):
        log(
            f"PYTHONDONTWRITEBYTECODE is set: caching bytecode under {prefix} (--env-bytecode to keep it off)"
        )
    results: list[RunResult] = []
    log(f"run {run}: starting the Temporal dev server and the database")
    async with temporal_server() as env, bench_database(args.database_url) as url:
        with contextlib.redirect_stdout(sys.stderr):  # Piccolo prints its migration report
            await migrate(url)
        client = env.client
        address = temporal_address(env)
        service_queue, delegate_queue, baseline_queue = (
            f"bench-{q}-{run}" for q in ("co", "delegate", "base")
        )
        settings = bench_settings(url, address, service_queue, delegate_queue, eager_start=not args.no_eager)
        temporal_pid = child_pid("temporal")
        meter = CpuMeter(
            {"python": [os.getpid()], "temporal": [temporal_pid] if temporal_pid else []},
            database=database_name(url),
        )
        profiler = Profiler(args.py_spy)
        lags: list[tuple[float, float]] = []

        def record_lag(ms: float) -> None:
            lags.append((time.perf_counter(), ms))
            if ms >= LOUD_LAG_MS:
                log(f"  the event loop ran {ms / 1000:.1f} s late")

        lag_watch = asyncio.create_task(watch_loop_lag(record_lag), name="loop-lag")
        port = free_port()
        base_url = f"http://127.0.0.1:{port}"
        async with (
            # with_worker: the worker below shares the client, as in `common-operations run`, so
            # the service starts runs eagerly (unless --no-eager); the baseline asks for the same.
            open_runtime(settings, client=client, with_worker=True) as runtime,
            build_worker(runtime),
            Worker(client, task_queue=delegate_queue, activities=[noop_task]),
            Worker(
                client, task_queue=baseline_queue, workflows=[BaselineWorkflow], activities=[baseline_noop]
            ),
        ):
            http_task = asyncio.create_task(serve_http(runtime, "127.0.0.1", port), name="rest")
            limits = httpx.Limits(
                max_connections=args.concurrency,
                max_keepalive_connections=args.concurrency,
                keepalive_expiry=CLIENT_KEEPALIVE_EXPIRY,
            )
            poller_limits = httpx.Limits(keepalive_expiry=CLIENT_KEEPALIVE_EXPIRY)
            try:
                await wait_http(base_url)
                async with (
                    httpx.AsyncClient(base_url=base_url, limits=limits, timeout=60) as api,
                    httpx.AsyncClient(base_url=base_url, limits=poller_limits, timeout=60) as poller,
                ):
                    no_sa = TaskService(
                        runtime.repository,
                        TaskWorkflows(
                            client,
                            service_queue,
                            search_attributes=False,
                            eager_start=runtime.workflows.eager_start,
                        ),
                        settings.operations,
                    )

                    async def timed(path: str, n: int, timeout: float, tag: str) -> RunResult:
                        r = RunResult(path, 0, n, 0.0, 0.0, {})
                        if path == "baseline":
                            r.wall_s, r.created_s = await run_baseline(
                                client,
                                baseline_queue,
                                n,
                                args.concurrency,
                                timeout,
                                tag,
                                eager=runtime.workflows.eager_start,
                            )
                            return r
                        if path == "ours":
                            r.wall_s, r.created_s, lat = await run_ours(
                                api, poller, n, args.concurrency, timeout, tag
                            )
                        else:
                            service = runtime.tasks if path == "service" else no_sa
                            r.wall_s, r.created_s, lat = await run_service(
                                service, n, args.concurrency, timeout, tag
                            )
                        lat.sort()
                        r.create_p50_ms = percentile(lat, 50) * 1000
                        r.create_p99_ms = percentile(lat, 99) * 1000
                        return r

                    log(f"warm-up: {args.warmup} items per path")
                    for path in args.paths:
                        await timed(path, args.warmup, 60, f"{run}-w-{path}")
                    for rnd in range(1, args.rounds + 1):
                        for path in args.paths:
                            tag = f"{run}-{path}{rnd}"
                            log(f"round {rnd}: {path}, {args.tasks} items")
                            profiler.start(f"lifecycle-{tag}")
                            meter.start()
                            t0 = time.perf_counter()
                            r = await timed(path, args.tasks, args.timeout, tag)
                            r.cpu_s = meter.stop()
                            r.extra["loop_lag"] = lag_summary(lags, t0)
                            r.extra["load_average"] = load_average()
                            r.round = rnd
                            r.tasks_per_s = args.tasks / r.wall_s
                            if profile := profiler.stop():
                                r.extra["profile"] = profile
                            results.append(r)
                            log(
                                f"  {r.tasks_per_s:.1f} items/s ({r.wall_s:.2f} s), cpu {r.cpu_s}, "
                                f"loop lag {r.extra['loop_lag']}, load {r.extra['load_average']}"
                            )
            finally:
                http_task.cancel()
                lag_watch.cancel()
                await asyncio.gather(http_task, lag_watch, return_exceptions=True)
    return report(args, run, results)


def report(args: argparse.Namespace, run: str, results: list[RunResult]) -> int:
    """Print the table, write the JSON; exit status 0."""
    rows = []
    for r in results:
        per_item = {k: v / r.tasks * 1000 for k, v in r.cpu_s.items() if k != "wall"}
        rows.append(
            [
                r.round,
                r.path,
                r.tasks,
                f"{r.wall_s:.2f}",
                f"{r.tasks_per_s:.1f}",
                f"{r.created_s:.2f}" if r.created_s is not None else "",
                f"{r.create_p50_ms:.0f}/{r.create_p99_ms:.0f}" if r.create_p50_ms is not None else "",
                f"{per_item.get('python', 0):.1f}",
                f"{per_item.get('temporal', 0):.1f}",
                f"{per_item.get('postgres', 0):.1f}",
                f"{r.extra.get('loop_lag', {}).get('max_ms', 0):.0f}",
            ]
        )
    print()
    print_table(
        [
            "round",
            "path",
            "N",
            "wall s",
            "items/s",
            "started s",
            "create p50/p99 ms",
            "py cpu ms/item",
            "temporal cpu ms/item",
            "pg cpu ms/item",
            "loop lag max ms",
        ],
        rows,
    )
    medians = {p: median(r.tasks_per_s for r in results if r.path == p) for p in args.paths}
    cpu_per_item = {
        p: {
            k: round(median(r.cpu_s[k] / r.tasks * 1000 for r in results if r.path == p), 1)
            for k in ("python", "temporal", "postgres")
        }
        for p in args.paths
    }
    base, ours = medians["baseline"], medians["ours"]
    ratio = ours / base if base else 0.0
    print()
    print(f"baseline (bare Temporal) median: {base:.1f} workflows/s")
    print(f"ours (REST -> completed) median: {ours:.1f} tasks/s")
    for p in args.paths:
        if p not in ("baseline", "ours"):
            share = medians[p] / base if base else 0.0
            print(f"{p} (diagnostic) median: {medians[p]:.1f} tasks/s, ratio to baseline {share:.2f}")
    verdict = "met" if ratio >= TARGET_RATIO else "MISSED"
    print(f"ratio ours/baseline: {ratio:.2f} (target >= {TARGET_RATIO}: {verdict})")
    path = write_results(
        "lifecycle",
        {
            "benchmark": "lifecycle",
            "run": run,
            "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "machine": machine(),
            "params": {k: v for k, v in vars(args).items() if k != "database_url"}
            | {
                "database": "embedded" if args.database_url is None else "server",
                "bytecode_cache_prefix": sys.pycache_prefix,
                "eager_start": not args.no_eager,
            },
            "load_average_at_end": load_average(),
            "runs": [asdict(r) for r in results],
            "median_per_s": medians,
            "median_cpu_ms_per_item": cpu_per_item,
            "ratio": ratio,
            "target_ratio": TARGET_RATIO,
            "target_met": ratio >= TARGET_RATIO,
        },
    )
    print(f"results: {path}")
    return 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(prog="python -m bench.lifecycle", description=__doc__.split("\n")[0])
    p.add_argument("--tasks", type=int, default=300, help="items per timed run (default 300)")
    p.add_argument("--concurrency", type=int, default=50, help="starts/POSTs in flight (default 50)")
    p.add_argument("--rounds", type=int, default=2, help="baseline+ours pairs (default 2)")
    p.add_argument("--warmup", type=int, default=5, help="warm-up items per path (default 5)")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds a timed run may take (default 300)")
    p.add_argument(
        "--database-url",
        default=os.environ.get(DATABASE_ENV),
        help=f"Postgres server to create a scratch database in (default ${DATABASE_ENV}, else embedded)",
    )
    p.add_argument(
        "--paths",
        type=lambda v: v.split(","),
        default=["baseline", "ours"],
        help="comma-separated, run in this order each round: baseline, ours, and the diagnostics "
        "service (TaskService called in-process, no HTTP) and service-nosa (same without search "
        "attributes); default baseline,ours",
    )
    p.add_argument(
        "--env-bytecode",
        action="store_true",
        help="keep PYTHONDONTWRITEBYTECODE as the environment sets it (the sandbox then recompiles the "
        "workflow module for every run)",
    )
    p.add_argument(
        "--no-eager",
        action="store_true",
        help="neither path starts runs eagerly (default: both do, the service because its worker shares "
        "the client, the baseline by request_eager_start)",
    )
    p.add_argument("--py-spy", metavar="PATH", help="profile each timed run with this py-spy executable")
    args = p.parse_args(argv)
    unknown = set(args.paths) - set(PATHS)
    if unknown or not {"baseline", "ours"} <= set(args.paths):
        p.error(f"--paths must include baseline and ours, and only {', '.join(PATHS)}")
    if args.tasks < 1 or args.concurrency < 1 or args.rounds < 1 or args.warmup < 1:
        p.error("--tasks, --concurrency, --rounds and --warmup must be positive")
    return args


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    code = 1
    try:
        # The same loop as the service's CLI, for both paths.
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            code = runner.run(main(parse_args()))
    except Exception:
        logging.getLogger("bench.lifecycle").exception("benchmark failed")
    exit_now(code)
