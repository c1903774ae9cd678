"""Create latency: REST ``CreateTask`` of an external task vs a bare ``start_workflow``, 50 in flight.

    python -m bench.create [--creates 1000] [--concurrency 50] [--rounds 3] [--database-url URL]

Two processes, as in a deployment (the same service process as ``bench.progress``):

- the **service process** (``python -m bench.serve_service``): ``open_runtime(with_worker=True)``,
  the worker, REST and gRPC, as ``common-operations run``; its runs start eagerly (its worker shares
  its client);
- this process, the **load generator**: the Temporal dev server (a child process), an httpx client
  for REST, and a Temporal client with the service's client settings (``infra.temporal.connect``)
  with a worker of the baseline workflow on that same client, so the baseline's starts are eager too
  (``request_eager_start=True``; eager start needs the worker on the starting client).

Paths, each ``--creates`` calls with at most ``--concurrency`` in flight (closed loop):

- **ours**: ``POST /api/v1/operations/tasks`` ``{"taskType": "bench_external", ...}`` (201): the row is
  inserted and the task's ``TaskWorkflow`` started; the task then waits for reports.
- **baseline**: ``client.start_workflow(BenchCounterWorkflow)``: a run that just waits.
- diagnostic (``--paths``): **baseline-sa**, the same bare start carrying the five search attributes
  a task's start carries.

After each timed run (untimed) the waiting work is removed so nothing piles up across rounds: our
tasks are cancelled through REST (the workflow records it), the baseline's runs terminated. Rounds
alternate baseline, ours after a warm-up of each; the target compares the medians of the rounds'
p99s: ours <= 2 x baseline.
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
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import httpx
import uvloop
from temporalio.api.workflowservice.v1 import DescribeNamespaceRequest
from temporalio.client import Client, WorkflowHandle
from temporalio.common import SearchAttributePair, TypedSearchAttributes
from temporalio.worker import Worker

from bench import auth as bench_auth
from bench.baseline import CounterWorkflow
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
    load_average,
    log,
    machine,
    median,
    percentile,
    print_table,
    temporal_address,
    temporal_server,
    write_results,
)
from bench.serve_service import TASK_TYPE, service_process
from common_operations.db.engine import migrate
from common_operations.domain.workflow_types import RECONCILER_STATUS_QUERY, reconciler_workflow_id
from common_operations.infra import temporal
from common_operations.workflows.task_workflow import (
    ENTITY_TYPE_KEY,
    PROGRESS_KEY,
    REQUESTED_BY_KEY,
    TASK_STATUS_KEY,
    TASK_TYPE_KEY,
)

TASKS = "/api/v1/operations/tasks"
HEADERS = bench_auth.headers()
TARGET_P99_FACTOR = 2.0
PATHS = ("baseline", "ours", "baseline-sa")


@dataclass
class RunResult:
    """One timed run of one path."""

    path: str
    round: int
    creates: int
    wall_s: float = 0.0
    creates_per_s: float = 0.0
    p50_ms: float = 0.0
    p90_ms: float = 0.0
    p99_ms: float = 0.0
    max_ms: float = 0.0
    eager: int | None = None
    cleanup_s: float = 0.0
    cpu_s: dict[str, float] = field(default_factory=dict)
    load_average: tuple[float, float, float] = (0.0, 0.0, 0.0)
    extra: dict[str, Any] = field(default_factory=dict)


async def bounded(n: int, concurrency: int, one: Callable[[int], Awaitable[None]], timeout: float) -> None:
    """``one(0) .. one(n-1)`` with at most ``concurrency`` running, within ``timeout`` seconds."""
    gate = asyncio.Semaphore(concurrency)

    async def guarded(i: int) -> None:
        async with gate:
            await one(i)

    async with asyncio.timeout(timeout):
        await asyncio.gather(*(guarded(i) for i in range(n)))


async def timed_creates(
    create: Callable[[int], Awaitable[None]], n: int, concurrency: int, timeout: float
) -> tuple[float, list[float]]:
    """Run ``create`` ``n`` times, ``concurrency`` in flight; (wall seconds, latencies in seconds)."""
    latencies: list[float] = []

    async def one(i: int) -> None:
        t = time.perf_counter()
        await create(i)
        latencies.append(time.perf_counter() - t)

    t0 = time.perf_counter()
    await bounded(n, concurrency, one, timeout)
    return time.perf_counter() - t0, latencies


class Ours:
    """REST CreateTask of the external bench type; cancelled through REST afterwards."""

    def __init__(self, base_url: str, concurrency: int) -> None:
        """Talk to the service process's REST listener at ``base_url``, ``concurrency`` connections."""
        self.base_url = base_url
        self.limits = httpx.Limits(
            max_connections=concurrency,
            max_keepalive_connections=concurrency,
            keepalive_expiry=CLIENT_KEEPALIVE_EXPIRY,
        )
        self._api: httpx.AsyncClient | None = None
        self.ids: list[str] = []

    @contextlib.asynccontextmanager
    async def session(self) -> AsyncIterator[None]:
        """Fresh connections for one phase (see ``CLIENT_KEEPALIVE_EXPIRY``)."""
        async with httpx.AsyncClient(base_url=self.base_url, limits=self.limits, timeout=60) as api:
            self._api = api
            try:
                yield
            finally:
                self._api = None

    @property
    def api(self) -> httpx.AsyncClient:
        """The current phase's client."""
        assert self._api is not None, "outside a session"
        return self._api

    async def create(self, tag: str, i: int) -> None:
        """One POST (201 expected)."""
        body = {"taskType": TASK_TYPE, "entityType": "bench", "requestedBy": f"bench-{tag}"}
        t = time.perf_counter()
        try:
            resp = await self.api.post(TASKS, json=body, headers=HEADERS)
        except httpx.TransportError as err:
            chain: list[str] = []
            cause = err.__cause__ or err.__context__
            while cause is not None and len(chain) < 5:
                chain.append(f"{type(cause).__module__}.{type(cause).__name__}({cause!r})")
                cause = cause.__cause__ or cause.__context__
            log(f"POST #{i} failed after {time.perf_counter() - t:.3f} s: {err!r}; causes: {chain}")
            raise
        if resp.status_code != 201:
            raise RuntimeError(f"CreateTask answered {resp.status_code}: {resp.text[:300]}")
        self.ids.append(resp.json()["task"]["id"])

    async def clean_up(self, concurrency: int, timeout: float) -> dict[str, Any]:
        """Cancel every task created (each workflow records its cancellation)."""
        ids, self.ids = self.ids, []
        statuses: dict[str, int] = {}

        async def cancel(i: int) -> None:
            resp = await self.api.post(f"{TASKS}/{ids[i]}/cancel", headers=HEADERS)
            status = resp.json()["task"]["status"] if resp.status_code == 200 else str(resp.status_code)
            statuses[status] = statuses.get(status, 0) + 1

        await bounded(len(ids), concurrency, cancel, timeout)
        return {"cancelled": statuses}


class Baseline:
    """Bare ``start_workflow`` of ``BenchCounterWorkflow`` (it waits); terminated afterwards."""

    def __init__(
        self, client: Client, task_queue: str, eager: bool, *, search_attributes: bool = False
    ) -> None:
        """Start on ``task_queue`` (a worker on ``client`` serves it in this process).

        With ``search_attributes`` each start carries the five a task's start carries (diagnostic).
        """
        self.client = client
        self.task_queue = task_queue
        self.eager = eager
        self.search_attributes = (
            TypedSearchAttributes(
                [
                    SearchAttributePair(TASK_TYPE_KEY, TASK_TYPE),
                    SearchAttributePair(ENTITY_TYPE_KEY, "bench"),
                    SearchAttributePair(TASK_STATUS_KEY, "pending"),
                    SearchAttributePair(REQUESTED_BY_KEY, "bench"),
                    SearchAttributePair(PROGRESS_KEY, 0),
                ]
            )
            if search_attributes
            else None
        )
        self.handles: list[WorkflowHandle[CounterWorkflow, int]] = []

    async def create(self, tag: str, i: int) -> None:
        """One start."""
        handle = await self.client.start_workflow(
            CounterWorkflow.run,
            id=f"bench-wait-{tag}-{i}",
            task_queue=self.task_queue,
            request_eager_start=self.eager,
            search_attributes=self.search_attributes,
        )
        self.handles.append(handle)

    @contextlib.asynccontextmanager
    async def session(self) -> AsyncIterator[None]:
        """Nothing to set up: the client keeps its one connection."""
        yield

    def eagerly_started(self) -> int:
        """How many of the current handles the server handed straight to the local worker."""
        return sum(bool(getattr(h, "__temporal_eagerly_started", False)) for h in self.handles)

    async def clean_up(self, concurrency: int, timeout: float) -> dict[str, Any]:
        """Terminate every run started."""
        handles, self.handles = self.handles, []

        async def terminate(i: int) -> None:
            await handles[i].terminate(reason="bench round over")

        await bounded(len(handles), concurrency, terminate, timeout)
        return {"terminated": len(handles)}


async def main(args: argparse.Namespace) -> int:
    """Set up, run the rounds, print and save the results."""
    run = uuid.uuid4().hex[:8]
    if not args.env_bytecode:
        enable_bytecode_cache()  # this process's worker re-imports bench.baseline per run, too
    results: list[RunResult] = []
    started_load = load_average()
    log(f"run {run}: starting the Temporal dev server and the database (load average {started_load})")
    async with temporal_server() as env, bench_database(args.database_url) as url:
        with contextlib.redirect_stdout(sys.stderr):  # Piccolo prints its migration report
            await migrate(url)
        address = temporal_address(env)
        service_queue, wait_queue = f"bench-co-{run}", f"bench-wait-{run}"
        client = await temporal.connect(address, "default")  # the service's client settings
        ns = await client.workflow_service.describe_namespace(DescribeNamespaceRequest(namespace="default"))
        capability = ns.namespace_info.capabilities.eager_workflow_start
        eager = not args.no_eager
        async with (
            service_process(
                url, address, service_queue, free_port(), env_bytecode=args.env_bytecode, eager=eager
            ) as service,
            Worker(client, task_queue=wait_queue, workflows=[CounterWorkflow]),
        ):
            log(
                f"eager start: namespace capability {capability}, service {service.ready['eager_start']}, "
                f"baseline {eager}"
            )
            temporal_pid = child_pid("temporal")
            meter = CpuMeter(
                {
                    "service": [service.pid],
                    "loadgen": [os.getpid()],
                    "temporal": [temporal_pid] if temporal_pid else [],
                },
                database=database_name(url),
            )
            profiler = Profiler(args.py_spy, pid=service.pid)
            paths: dict[str, Ours | Baseline] = {
                "baseline": Baseline(client, wait_queue, eager),
                "baseline-sa": Baseline(client, wait_queue, eager, search_attributes=True),
                "ours": Ours(f"http://127.0.0.1:{service.rest_port}", args.concurrency),
            }

            async def timed(path: str, n: int, tag: str, rnd: int) -> RunResult:
                driver = paths[path]
                r = RunResult(path, rnd, n)
                if rnd:
                    profiler.start(f"create-{tag}")
                async with driver.session():
                    meter.start()
                    t0 = time.perf_counter()
                    r.wall_s, latencies = await timed_creates(
                        lambda i: driver.create(tag, i), n, args.concurrency, args.timeout
                    )
                    r.cpu_s = meter.stop()
                    r.extra["service_loop_lag"] = service.lag_since(t0)
                if rnd and (profile := profiler.stop()):
                    r.extra["profile"] = profile
                r.load_average = load_average()
                if isinstance(driver, Baseline):
                    r.eager = driver.eagerly_started()
                t = time.perf_counter()
                async with driver.session():
                    r.extra |= await driver.clean_up(args.concurrency, args.timeout)
                r.cleanup_s = time.perf_counter() - t
                # logged when each finishes: counted after the finish / clean-up
                r.extra["slow_workflow_tasks"] = service.slow_workflow_tasks_since(t0)
                latencies.sort()
                r.creates_per_s = n / r.wall_s
                r.p50_ms, r.p90_ms, r.p99_ms, r.max_ms = (
                    percentile(latencies, q) * 1000 for q in (50, 90, 99, 100)
                )
                await asyncio.sleep(args.pause)
                return r

            log(f"warm-up: {args.warmup} creates per path")
            for path in args.paths:
                await timed(path, args.warmup, f"{run}-w-{path}", 0)
            for rnd in range(1, args.rounds + 1):
                for path in args.paths:
                    tag = f"{run}-{path}{rnd}"
                    log(f"round {rnd}: {path}, {args.creates} creates, {args.concurrency} in flight")
                    r = await timed(path, args.creates, tag, rnd)
                    results.append(r)
                    log(
                        f"  {r.creates_per_s:.1f} creates/s ({r.wall_s:.2f} s), p50 {r.p50_ms:.1f} ms, "
                        f"p99 {r.p99_ms:.1f} ms, eager {r.eager}, cpu {r.cpu_s}, load {r.load_average}, "
                        f"cleanup {r.cleanup_s:.1f} s {r.extra.get('cancelled', '')}"
                    )
            reconciler = await reconciler_status(client, service_queue)
    return report(args, run, results, service.ready, started_load, capability, reconciler)


async def reconciler_status(client: Client, task_queue: str) -> Any:
    """The service's reconciler workflow's last pass (did it adopt waiting tasks meanwhile?)."""
    try:
        return await client.get_workflow_handle(reconciler_workflow_id(task_queue)).query(
            RECONCILER_STATUS_QUERY
        )
    except Exception as err:
        return f"no answer: {err}"


def report(
    args: argparse.Namespace,
    run: str,
    results: list[RunResult],
    service_ready: dict[str, Any],
    started_load: tuple[float, float, float],
    capability: bool,
    reconciler: Any,
) -> int:
    """Print the table, write the JSON; exit status 0."""
    groups = ("service", "loadgen", "temporal", "postgres")
    rows = []
    for r in results:
        per = {k: r.cpu_s.get(k, 0.0) / r.creates * 1000 for k in groups}
        rows.append(
            [
                r.round,
                r.path,
                r.creates,
                f"{r.wall_s:.2f}",
                f"{r.creates_per_s:.1f}",
                f"{r.p50_ms:.0f}/{r.p90_ms:.0f}/{r.p99_ms:.0f}",
                "" if r.eager is None else r.eager,
                f"{r.extra.get('service_loop_lag', {}).get('max_ms', 0):.0f}",
                r.extra.get("slow_workflow_tasks", ""),
                *(f"{per[k]:.1f}" for k in groups),
                " ".join(str(x) for x in r.load_average),
            ]
        )
    print()
    print_table(
        [
            "round",
            "path",
            "N",
            "wall s",
            "creates/s",
            "p50/p90/p99 ms",
            "eager",
            "svc loop lag max ms",
            "wf tasks > 5 s",
            "service cpu ms/create",
            "loadgen cpu ms/create",
            "temporal cpu ms/create",
            "pg cpu ms/create",
            "load avg",
        ],
        rows,
    )
    summary: dict[str, Any] = {}
    for path in args.paths:
        rs = [r for r in results if r.path == path]
        summary[path] = {
            "p99_ms": [round(r.p99_ms, 1) for r in rs],
            "median_p50_ms": round(median(r.p50_ms for r in rs), 1),
            "median_p99_ms": round(median(r.p99_ms for r in rs), 1),
            "median_creates_per_s": round(median(r.creates_per_s for r in rs), 1),
            "median_cpu_ms_per_create": {
                k: round(median(r.cpu_s.get(k, 0.0) / r.creates * 1000 for r in rs), 2) for k in groups
            },
        }
    base, ours = summary["baseline"]["median_p99_ms"], summary["ours"]["median_p99_ms"]
    factor = ours / base if base else 0.0
    # The machine is shared: load moves between rounds, so also each round's own p99 factor (ours
    # and the baseline run back to back).
    pairs = [
        o.p99_ms / b.p99_ms
        for b, o in zip(
            (r for r in results if r.path == "baseline"),
            (r for r in results if r.path == "ours"),
            strict=True,
        )
    ]
    met = factor <= TARGET_P99_FACTOR
    throughput = (
        summary["ours"]["median_creates_per_s"] / summary["baseline"]["median_creates_per_s"]
        if summary["baseline"]["median_creates_per_s"]
        else 0.0
    )
    print()
    print(
        f"p50: baseline {summary['baseline']['median_p50_ms']:.1f} ms, "
        f"ours {summary['ours']['median_p50_ms']:.1f} ms"
    )
    print(f"p99: baseline {base:.1f} ms, ours {ours:.1f} ms")
    print(f"per-round p99 factors {', '.join(f'{x:.2f}' for x in pairs)} (median {median(pairs):.2f})")
    for extra in (p for p in args.paths if p not in ("baseline", "ours")):
        d = summary[extra]
        print(
            f"{extra} (diagnostic): p50 {d['median_p50_ms']:.1f} ms, p99 {d['median_p99_ms']:.1f} ms, "
            f"{d['median_creates_per_s']:.1f} creates/s"
        )
    print(
        f"p99 ours/baseline: {factor:.2f} (target <= {TARGET_P99_FACTOR:g}: {'met' if met else 'MISSED'}); "
        f"throughput ours/baseline {throughput:.2f}"
    )
    out = write_results(
        "create",
        {
            "benchmark": "create",
            "run": run,
            "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "machine": machine(),
            "load_average": {"start": started_load, "end": load_average()},
            "params": {k: v for k, v in vars(args).items() if k != "database_url"}
            | {"database": "embedded" if args.database_url is None else "server"},
            "eager_start_namespace_capability": capability,
            "service": service_ready,
            "reconciler_last_pass": reconciler,
            "runs": [asdict(r) for r in results],
            "summary": summary,
            "p99_factor": factor,
            "round_p99_factors": [round(x, 3) for x in pairs],
            "median_round_p99_factor": round(median(pairs), 3),
            "throughput_ratio": throughput,
            "target_p99_factor": TARGET_P99_FACTOR,
            "target_met": met,
        },
    )
    print(f"results: {out}")
    return 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(prog="python -m bench.create", description=__doc__.split("\n")[0])
    p.add_argument("--creates", type=int, default=1000, help="creates per timed run (default 1000)")
    p.add_argument("--concurrency", type=int, default=50, help="creates in flight (default 50)")
    p.add_argument("--rounds", type=int, default=3, help="baseline+ours pairs (default 3)")
    p.add_argument("--warmup", type=int, default=50, help="warm-up creates per path (default 50)")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds a timed run may take (default 300)")
    p.add_argument(
        "--pause", type=float, default=2.0, help="seconds between runs, after clean-up (default 2)"
    )
    p.add_argument("--no-eager", action="store_true", help="neither path starts eagerly (default: both do)")
    p.add_argument(
        "--paths",
        type=lambda v: v.split(","),
        default=["baseline", "ours"],
        help="comma-separated, run in this order each round: baseline, ours, and the diagnostic "
        "baseline-sa (the bare start with the five search attributes a task's start carries); "
        "default baseline,ours",
    )
    p.add_argument(
        "--database-url",
        default=os.environ.get(DATABASE_ENV),
        help=f"Postgres server to create a scratch database in (default ${DATABASE_ENV}, else embedded)",
    )
    p.add_argument("--env-bytecode", action="store_true", help="no bytecode cache (see bench/README.md)")
    p.add_argument("--py-spy", metavar="PATH", help="profile the service process in each timed run")
    args = p.parse_args(argv)
    if set(args.paths) - set(PATHS) or not {"baseline", "ours"} <= set(args.paths):
        p.error(f"--paths must include baseline and ours, and only {', '.join(PATHS)}")
    if min(args.creates, args.concurrency, args.rounds, args.warmup) < 1:
        p.error("--creates, --concurrency, --rounds and --warmup must be positive")
    return args


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    code = 1
    try:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            code = runner.run(main(parse_args()))
    except Exception:
        logging.getLogger("bench.create").exception("benchmark failed")
    exit_now(code)
