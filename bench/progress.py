"""Progress reports per second: gRPC ``UpdateTaskProgress`` vs bare Temporal Updates on a trivial workflow.

    python -m bench.progress [--reports 2000] [--shapes 1,20,20on1] [--rounds 3] [--database-url URL]

Two processes, as in a deployment:

- the **service process** (``python -m bench.serve_service``): what ``common-operations run`` runs —
  ``open_runtime(with_worker=True)``, the worker (``build_worker`` + reconciler), the gRPC server
  (``build_server``) and REST on free 127.0.0.1 ports — plus a worker for the baseline's
  ``BenchCounterWorkflow`` on its own task queue, on the same Temporal client;
- this process, the **load generator**: the Temporal dev server (a child process), a gRPC channel to
  the service, and a Temporal client with the service's client settings (``infra.temporal.connect``).

Paths, each timed over ``--reports`` reports after its targets are prepared (untimed):

- **ours**: ``UpdateTaskProgress`` of an external task (``bench_external``): absolute counts
  (``processedRecords = i``, ``totalRecords`` = the task's share) and a distinct ``reportId`` each.
  Tasks are created by gRPC ``CreateTask`` and primed with one report (pending -> processing, mirrored
  before it answers) before the clock starts; afterwards they are completed by one last report.
- **baseline**: ``execute_update("increment", i, id=<distinct>)`` on ``BenchCounterWorkflow`` runs
  (a synchronous handler: ``count += 1; return count``), started and primed with one Update before
  the clock starts, finished by a signal afterwards. A baseline target moves to a fresh, pre-started
  run every ``--per-run`` Updates (default 1000, the service's ``max_reports_per_run``), so no bare
  run takes more Updates than one of ours (Temporal caps a run at 2000).

Shapes (``--shapes``):

- ``1``: one reporter, one report at a time (latency-bound);
- ``20``: 20 reporters, each on its own task / its own workflow (throughput);
- ``20on1``: ours 20 reporters on ONE task (the service sends at most ``max_in_flight_reports`` (5)
  of a task at once and queues the rest) vs the baseline's 10 updaters on ONE workflow (Temporal
  refuses more than 10 Updates in flight on one run, so 20 would fail).

Rounds alternate baseline, ours after a warm-up of each; ratio = median(ours reports/s) /
median(baseline reports/s) per shape. CPU per report is recorded for the service process, this
process, the dev server and the database's Postgres backends.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import logging
import math
import os
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import grpc
import grpc.aio
import uvloop
from temporalio.client import Client, WorkflowHandle
from temporalio.service import RPCError, RPCStatusCode

from bench import auth as bench_auth
from bench.baseline import CounterWorkflow
from bench.common import (
    DATABASE_ENV,
    CpuMeter,
    Profiler,
    bench_database,
    child_pid,
    database_name,
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
from common_operations.domain.workflow_types import PROGRESS_QUERY, ProgressSnapshot, workflow_id_for
from common_operations.grpc.v1 import operations_pb2 as pb
from common_operations.grpc.v1 import operations_pb2_grpc as pb_grpc
from common_operations.infra import temporal

if TYPE_CHECKING:
    from common_operations.grpc.v1.operations_pb2_grpc import OperationsServiceAsyncStub

TARGET_RATIO = 0.7
PATHS = ("baseline", "ours", "grpc-get")
METADATA = bench_auth.metadata()
CALL_TIMEOUT = 60.0
# A report refused as busy (429 / RESOURCE_EXHAUSTED) is sent again, same id, as a client would.
BUSY_RETRIES = 5
BUSY_BACKOFF = 1.0


@dataclass(frozen=True)
class Shape:
    """How many senders, on how many targets."""

    name: str
    ours_lanes: int
    baseline_lanes: int
    one_target: bool
    label: str

    def lanes(self, path: str) -> int:
        """Senders of ``path``."""
        return self.baseline_lanes if path == "baseline" else self.ours_lanes


SHAPES = {
    "1": Shape("1", 1, 1, False, "1 reporter, 1 task / 1 workflow"),
    "20": Shape("20", 20, 20, False, "20 reporters on 20 tasks / 20 updaters on 20 workflows"),
    "20on1": Shape(
        "20on1", 20, 10, True, "ours 20 reporters on ONE task / baseline 10 updaters on ONE workflow"
    ),
}


@dataclass
class RunResult:
    """One timed run of one path in one shape."""

    shape: str
    path: str
    round: int
    reports: int
    lanes: int
    targets: int
    wall_s: float = 0.0
    reports_per_s: float = 0.0
    p50_ms: float = 0.0
    p90_ms: float = 0.0
    p99_ms: float = 0.0
    max_ms: float = 0.0
    busy_retries: int = 0
    cpu_s: dict[str, float] = field(default_factory=dict)
    load_average: tuple[float, float, float] = (0.0, 0.0, 0.0)
    extra: dict[str, Any] = field(default_factory=dict)


Send = Callable[[int], Awaitable[None]]


def split(n: int, parts: int) -> list[int]:
    """``n`` as ``parts`` near-equal counts."""
    return [n // parts + (1 if k < n % parts else 0) for k in range(parts)]


async def drive(targets: list[tuple[int, Send]], lanes: int, timeout: float) -> tuple[float, list[float]]:
    """Send every target's reports 1..n with ``lanes`` senders; one report in flight per sender.

    With as many targets as lanes each sender has its own target; with one target all senders
    share it, each taking the next report number.

    Returns:
        (wall seconds, latency of each report in seconds).
    """
    latencies: list[float] = []

    async def lane(n: int, numbers: itertools.count[int], send: Send) -> None:
        for i in numbers:
            if i > n:
                return
            t = time.perf_counter()
            await send(i)
            latencies.append(time.perf_counter() - t)

    if len(targets) == 1:
        n, send = targets[0]
        numbers = itertools.count(1)
        senders = [lane(n, numbers, send) for _ in range(lanes)]
    else:
        assert len(targets) == lanes
        senders = [lane(n, itertools.count(1), send) for n, send in targets]
    t0 = time.perf_counter()
    async with asyncio.timeout(timeout):
        await asyncio.gather(*senders)
    return time.perf_counter() - t0, latencies


class Busy:
    """Counts reports sent again after a busy answer."""

    def __init__(self) -> None:
        self.retries = 0

    async def call(self, attempt: Callable[[], Awaitable[Any]], is_busy: Callable[[Exception], bool]) -> Any:
        """Run ``attempt``; on a busy answer wait and run it again (same report id)."""
        for k in range(BUSY_RETRIES + 1):
            try:
                return await attempt()
            except Exception as err:
                if not is_busy(err) or k == BUSY_RETRIES:
                    raise
                self.retries += 1
                await asyncio.sleep(BUSY_BACKOFF)
        raise AssertionError("unreachable")


def grpc_busy(err: Exception) -> bool:
    """A 429: too many reports of the task queued, or Temporal busy."""
    return isinstance(err, grpc.aio.AioRpcError) and err.code() is grpc.StatusCode.RESOURCE_EXHAUSTED


def temporal_busy(err: Exception) -> bool:
    """Temporal's in-flight Update limit (RESOURCE_EXHAUSTED)."""
    return isinstance(err, RPCError) and err.status is RPCStatusCode.RESOURCE_EXHAUSTED


class Ours:
    """Tasks of the external bench type, reported on through gRPC."""

    def __init__(self, stub: OperationsServiceAsyncStub, client: Client, *, read_only: bool = False) -> None:
        """Use ``stub`` for the service and ``client`` for the read-only ``progress`` query.

        ``read_only`` (the ``grpc-get`` diagnostic) sends ``GetTask`` of the same tasks instead of
        reports: the gRPC server, the service call and the row read, without Temporal.
        """
        self.stub = stub
        self.client = client
        self.read_only = read_only
        self.task_ids: list[str] = []

    async def prepare(self, tag: str, counts: list[int], busy: Busy) -> list[tuple[int, Send]]:
        """Create one task per count, prime it with one report; the senders of reports 1..n."""
        targets: list[tuple[int, Send]] = []
        self.task_ids = []
        for k, n in enumerate(counts):
            created = await self.stub.CreateTask(
                pb.CreateTaskRequest(task_type=TASK_TYPE, entity_type="bench", requested_by=f"bench-{tag}"),
                metadata=METADATA,
                timeout=CALL_TIMEOUT,
            )
            task_id = created.task.id
            await self.stub.UpdateTaskProgress(
                pb.UpdateTaskProgressRequest(
                    task_id=task_id, processed_records=0, total_records=n, report_id=f"{tag}-t{k}-prime"
                ),
                metadata=METADATA,
                timeout=CALL_TIMEOUT,
            )
            self.task_ids.append(task_id)
            targets.append((n, self._sender(task_id, n, f"{tag}-t{k}", busy)))
        return targets

    def _sender(self, task_id: str, n: int, prefix: str, busy: Busy) -> Send:
        async def get(i: int) -> None:
            await self.stub.GetTask(pb.GetTaskRequest(id=task_id), metadata=METADATA, timeout=CALL_TIMEOUT)

        async def send(i: int) -> None:
            request = pb.UpdateTaskProgressRequest(
                task_id=task_id, processed_records=i, total_records=n, report_id=f"{prefix}-{i}"
            )
            await busy.call(
                lambda: self.stub.UpdateTaskProgress(request, metadata=METADATA, timeout=CALL_TIMEOUT),
                grpc_busy,
            )

        return get if self.read_only else send

    async def finish(self, tag: str, expected: list[int]) -> dict[str, Any]:
        """Check each task's applied report count (the ``progress`` query), then complete it."""
        runs = []
        for k, (task_id, n) in enumerate(zip(self.task_ids, expected, strict=True)):
            snapshot = await self.client.get_workflow_handle(workflow_id_for(task_id)).query(
                PROGRESS_QUERY, result_type=ProgressSnapshot
            )
            if snapshot.reports != (1 if self.read_only else n + 1):
                raise RuntimeError(f"task {task_id}: {snapshot.reports} reports applied, {n + 1} sent")
            runs.append(snapshot.runs)
            await self.stub.UpdateTaskProgress(
                pb.UpdateTaskProgressRequest(
                    task_id=task_id, is_completed=True, report_id=f"{tag}-t{k}-done"
                ),
                metadata=METADATA,
                timeout=CALL_TIMEOUT,
            )
        return {"workflow_runs_per_task": runs}


class Baseline:
    """``BenchCounterWorkflow`` runs, updated through the load generator's own Temporal client."""

    def __init__(self, client: Client, task_queue: str, per_run: int) -> None:
        """Start runs on ``task_queue`` (served in the service process); ``per_run`` Updates each."""
        self.client = client
        self.task_queue = task_queue
        self.per_run = per_run
        self.handles: list[list[WorkflowHandle[CounterWorkflow, int]]] = []

    async def prepare(self, tag: str, counts: list[int], busy: Busy) -> list[tuple[int, Send]]:
        """Start (and prime) enough runs per target; the senders of Updates 1..n."""
        targets: list[tuple[int, Send]] = []
        self.handles = []
        for k, n in enumerate(counts):
            handles = []
            for j in range(math.ceil(n / self.per_run)):
                handle = await self.client.start_workflow(
                    CounterWorkflow.run, id=f"bench-counter-{tag}-t{k}-{j}", task_queue=self.task_queue
                )
                await handle.execute_update(CounterWorkflow.increment, 0, id=f"{tag}-t{k}-{j}-prime")
                handles.append(handle)
            self.handles.append(handles)
            targets.append((n, self._sender(handles, f"{tag}-t{k}", busy)))
        return targets

    def _sender(self, handles: list[WorkflowHandle[CounterWorkflow, int]], prefix: str, busy: Busy) -> Send:
        async def send(i: int) -> None:
            handle = handles[(i - 1) // self.per_run]
            await busy.call(
                lambda: handle.execute_update(CounterWorkflow.increment, i, id=f"{prefix}-{i}"),
                temporal_busy,
            )

        return send

    async def finish(self, tag: str, expected: list[int]) -> dict[str, Any]:
        """End the runs and check that every Update was applied once."""
        for handles, n in zip(self.handles, expected, strict=True):
            for handle in handles:
                await handle.signal(CounterWorkflow.finish)
            counted = sum([await h.result() for h in handles]) - len(handles)  # minus the primes
            if counted != n:
                raise RuntimeError(f"{counted} Updates applied, {n} sent")
        return {"workflow_runs_per_target": [len(h) for h in self.handles]}


async def main(args: argparse.Namespace) -> int:
    """Set up, run the rounds, print and save the results."""
    run = uuid.uuid4().hex[:8]
    results: list[RunResult] = []
    started_load = load_average()
    log(f"run {run}: starting the Temporal dev server and the database (load average {started_load})")
    async with temporal_server() as env, bench_database(args.database_url) as url:
        with contextlib.redirect_stdout(sys.stderr):  # Piccolo prints its migration report
            await migrate(url)
        address = temporal_address(env)
        service_queue, baseline_queue = f"bench-co-{run}", f"bench-counter-{run}"
        async with (
            service_process(
                url,
                address,
                service_queue,
                free_port(),
                baseline_queue=baseline_queue,
                env_bytecode=args.env_bytecode,
            ) as service,
            grpc.aio.insecure_channel(f"127.0.0.1:{service.grpc_port}") as channel,
        ):
            client = await temporal.connect(address, "default")  # the service's client settings
            stub = pb_grpc.OperationsServiceStub(channel)
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
                "baseline": Baseline(client, baseline_queue, args.per_run),
                "ours": Ours(stub, client),
                "grpc-get": Ours(stub, client, read_only=True),
            }

            async def timed(shape: Shape, path: str, n: int, tag: str, rnd: int) -> RunResult:
                lanes = shape.lanes(path)
                counts = [n] if shape.one_target else split(n, lanes)
                busy = Busy()
                driver = paths[path]
                targets = await driver.prepare(tag, counts, busy)
                r = RunResult(shape.name, path, rnd, n, lanes, len(counts))
                if rnd:
                    profiler.start(f"progress-{tag}")
                meter.start()
                t0 = time.perf_counter()
                r.wall_s, latencies = await drive(targets, lanes, args.timeout)
                r.cpu_s = meter.stop()
                r.extra["service_loop_lag"] = service.lag_since(t0)
                if rnd and (profile := profiler.stop()):
                    r.extra["profile"] = profile
                r.load_average = load_average()
                r.busy_retries = busy.retries
                r.extra |= await driver.finish(tag, counts)
                # logged when each finishes: counted after the finish / clean-up
                r.extra["slow_workflow_tasks"] = service.slow_workflow_tasks_since(t0)
                latencies.sort()
                r.reports_per_s = n / r.wall_s
                r.p50_ms, r.p90_ms, r.p99_ms, r.max_ms = (
                    percentile(latencies, q) * 1000 for q in (50, 90, 99, 100)
                )
                return r

            for name in args.shapes:
                shape = SHAPES[name]
                log(f"shape {name} ({shape.label}): warm-up, {args.warmup} reports per path")
                for path in args.paths:
                    await timed(shape, path, args.warmup, f"{run}-{name}-w-{path}", 0)
                for rnd in range(1, args.rounds + 1):
                    for path in args.paths:
                        tag = f"{run}-{name}-{path}{rnd}"
                        log(f"shape {name}, round {rnd}: {path}, {args.reports} reports")
                        r = await timed(shape, path, args.reports, tag, rnd)
                        results.append(r)
                        log(
                            f"  {r.reports_per_s:.1f} reports/s ({r.wall_s:.2f} s), p50 {r.p50_ms:.1f} ms, "
                            f"p99 {r.p99_ms:.1f} ms, cpu {r.cpu_s}, load {r.load_average}"
                        )
    return report(args, run, results, service.ready, started_load)


def report(
    args: argparse.Namespace,
    run: str,
    results: list[RunResult],
    service_ready: dict[str, Any],
    started_load: tuple[float, float, float],
) -> int:
    """Print the tables, write the JSON; exit status 0."""
    groups = ("service", "loadgen", "temporal", "postgres")
    rows = []
    for r in results:
        per = {k: r.cpu_s.get(k, 0.0) / r.reports * 1000 for k in groups}
        rows.append(
            [
                r.shape,
                r.round,
                r.path,
                f"{r.lanes}->{r.targets}",
                f"{r.wall_s:.2f}",
                f"{r.reports_per_s:.1f}",
                f"{r.p50_ms:.1f}/{r.p99_ms:.1f}",
                *(f"{per[k]:.2f}" for k in groups),
                r.busy_retries,
                f"{r.extra.get('service_loop_lag', {}).get('max_ms', 0):.0f}",
                r.extra.get("slow_workflow_tasks", ""),
                " ".join(str(x) for x in r.load_average),
            ]
        )
    print()
    print_table(
        [
            "shape",
            "round",
            "path",
            "senders->targets",
            "wall s",
            "reports/s",
            "p50/p99 ms",
            "service cpu ms/rep",
            "loadgen cpu ms/rep",
            "temporal cpu ms/rep",
            "pg cpu ms/rep",
            "429 retries",
            "svc loop lag max ms",
            "wf tasks > 5 s",
            "load avg",
        ],
        rows,
    )
    summary: dict[str, Any] = {}
    print()
    for name in args.shapes:
        mine = [r for r in results if r.shape == name]
        s: dict[str, Any] = {"label": SHAPES[name].label}
        for path in args.paths:
            rs = [r for r in mine if r.path == path]
            s[path] = {
                "reports_per_s": [round(r.reports_per_s, 1) for r in rs],
                "median_reports_per_s": round(median(r.reports_per_s for r in rs), 1),
                "median_p50_ms": round(median(r.p50_ms for r in rs), 2),
                "median_p99_ms": round(median(r.p99_ms for r in rs), 2),
                "median_cpu_ms_per_report": {
                    k: round(median(r.cpu_s.get(k, 0.0) / r.reports * 1000 for r in rs), 2) for k in groups
                },
            }
        base, ours = s["baseline"]["median_reports_per_s"], s["ours"]["median_reports_per_s"]
        s["ratio"] = round(ours / base, 3) if base else 0.0
        # The machine is shared: load moves between rounds, so also each round's own ratio (ours
        # and the baseline run back to back) and the ratio of total CPU per report.
        pairs = [
            o.reports_per_s / b.reports_per_s
            for b, o in zip(
                (r for r in mine if r.path == "baseline"), (r for r in mine if r.path == "ours"), strict=True
            )
        ]
        s["round_ratios"] = [round(x, 3) for x in pairs]
        s["median_round_ratio"] = round(median(pairs), 3)
        cpu = {path: sum(s[path]["median_cpu_ms_per_report"].values()) for path in ("baseline", "ours")}
        s["cpu_ratio"] = round(cpu["baseline"] / cpu["ours"], 3) if cpu["ours"] else 0.0
        s["p50_latency_ratio"] = (
            round(s["ours"]["median_p50_ms"] / s["baseline"]["median_p50_ms"], 3)
            if s["baseline"]["median_p50_ms"]
            else 0.0
        )
        has_target = name in ("1", "20")
        if has_target:
            s["target_ratio"] = TARGET_RATIO
            s["target_met"] = s["ratio"] >= TARGET_RATIO
        summary[name] = s
        verdict = (
            f" (target >= {TARGET_RATIO}: {'met' if s['ratio'] >= TARGET_RATIO else 'MISSED'})"
            if has_target
            else " (no target; informational)"
        )
        print(
            f"shape {name} [{SHAPES[name].label}]: baseline {base:.1f}/s, ours {ours:.1f}/s, "
            f"ratio {s['ratio']:.2f}{verdict}; p50 baseline {s['baseline']['median_p50_ms']:.1f} ms, "
            f"ours {s['ours']['median_p50_ms']:.1f} ms"
        )
        print(
            f"  per-round ratios {', '.join(f'{x:.2f}' for x in pairs)} "
            f"(median {s['median_round_ratio']:.2f}); "
            f"total CPU per report baseline/ours {s['cpu_ratio']:.2f}"
        )
        for extra in (p for p in args.paths if p not in ("baseline", "ours")):
            d = s[extra]
            print(
                f"  {extra} (diagnostic): {d['median_reports_per_s']:.1f} calls/s, "
                f"p50 {d['median_p50_ms']:.1f} ms, "
                f"service cpu {d['median_cpu_ms_per_report']['service']:.2f} ms/call"
            )
    out = write_results(
        "progress",
        {
            "benchmark": "progress",
            "run": run,
            "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "machine": machine(),
            "load_average": {"start": started_load, "end": load_average()},
            "params": {k: v for k, v in vars(args).items() if k != "database_url"}
            | {"database": "embedded" if args.database_url is None else "server"},
            "service": service_ready,
            "runs": [asdict(r) for r in results],
            "summary": summary,
        },
    )
    print(f"results: {out}")
    return 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(prog="python -m bench.progress", description=__doc__.split("\n")[0])
    p.add_argument("--reports", type=int, default=2000, help="reports per timed run (default 2000)")
    p.add_argument(
        "--shapes",
        type=lambda v: v.split(","),
        default=list(SHAPES),
        help=f"comma-separated, from {', '.join(SHAPES)} (default all)",
    )
    p.add_argument(
        "--paths",
        type=lambda v: v.split(","),
        default=["baseline", "ours"],
        help="comma-separated, run in this order each round: baseline, ours, and the diagnostic "
        "grpc-get (GetTask of the same tasks instead of reports: gRPC + row read, no Temporal); "
        "default baseline,ours",
    )
    p.add_argument("--rounds", type=int, default=3, help="baseline+ours pairs per shape (default 3)")
    p.add_argument("--warmup", type=int, default=50, help="warm-up reports per path and shape (default 50)")
    p.add_argument(
        "--per-run",
        type=int,
        default=1000,
        help="Updates per baseline workflow run before the next (default 1000, as max_reports_per_run)",
    )
    p.add_argument("--timeout", type=float, default=600.0, help="seconds a timed run may take (default 600)")
    p.add_argument(
        "--database-url",
        default=os.environ.get(DATABASE_ENV),
        help=f"Postgres server to create a scratch database in (default ${DATABASE_ENV}, else embedded)",
    )
    p.add_argument(
        "--env-bytecode",
        action="store_true",
        help="no bytecode cache in the service process (see bench/README.md)",
    )
    p.add_argument("--py-spy", metavar="PATH", help="profile the service process in each timed run")
    args = p.parse_args(argv)
    if set(args.paths) - set(PATHS) or not {"baseline", "ours"} <= set(args.paths):
        p.error(f"--paths must include baseline and ours, and only {', '.join(PATHS)}")
    if unknown := set(args.shapes) - set(SHAPES):
        p.error(f"unknown shapes {', '.join(sorted(unknown))}; choose from {', '.join(SHAPES)}")
    if min(args.reports, args.rounds, args.warmup, args.per_run) < 1:
        p.error("--reports, --rounds, --warmup and --per-run must be positive")
    if args.reports < max(s.ours_lanes for s in SHAPES.values()):
        p.error("--reports must be at least 20 (one per reporter)")
    return args


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    code = 1
    try:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            code = runner.run(main(parse_args()))
    except Exception:
        logging.getLogger("bench.progress").exception("benchmark failed")
    exit_now(code)
