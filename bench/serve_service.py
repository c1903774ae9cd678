"""The whole service in its own process, as ``common-operations run`` runs it, for ``bench.progress``
and ``bench.create`` to load from another process.

    python -m bench.serve_service --database-url URL --temporal-address HOST:PORT --task-queue Q
        --rest-port PORT [--grpc-port PORT] [--baseline-queue Q] [--env-bytecode] [--no-eager]

``open_runtime(settings, with_worker=True)`` (so new runs start eagerly on this process's worker),
``run_worker`` (``build_worker`` + the reconciler workflow, as ``run`` does), the gRPC server
(``build_server``) and the REST API (``serve_http``), all on 127.0.0.1, on uvloop like the CLI.
With ``--baseline-queue`` a worker for ``BenchCounterWorkflow`` (the baselines' trivial workflow)
runs on that queue in this same process, on the same client. The service's operations settings
are left at their defaults; one external task type, ``bench_external``, is configured.

Prints one JSON line on stdout once both listeners answer (``{"ready": true, ...}``: pid, ports,
the effective settings), then every second the worst lag of its event loop in that second
(``loop-lag-ms 12.3``), and stops on SIGTERM/SIGINT. :func:`service_process` starts and stops it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.auth import auth_settings
from bench.common import enable_bytecode_cache, exit_now, lag_summary, log, watch_loop_lag
from bench.serve_api import wait_listening

TASK_TYPE = "bench_external"
LAG_PREFIX = "loop-lag-ms "
LOUD_LAG_MS = 1000.0
READY_TIMEOUT = 90.0
STOP_TIMEOUT = 30.0
REPO_ROOT = Path(__file__).resolve().parent.parent


def service_settings(database_url: str, address: str, task_queue: str, *, eager_start: bool = True) -> Any:
    """The service's settings: defaults, plus the addresses and one external task type."""
    from common_operations.config import OperationsSettings, Settings, TaskTypeSettings

    return Settings(
        database_url=database_url,
        temporal_address=address,
        temporal={
            "address": address,
            "task_queue": task_queue,
            "search_attributes": True,
            "eager_start": eager_start,
        },
        operations=OperationsSettings(task_types={TASK_TYPE: TaskTypeSettings(kind="external")}),
        **auth_settings(),
    )


async def serve(args: argparse.Namespace) -> None:
    """Open the runtime, run the worker(s), gRPC and REST until cancelled."""
    from temporalio.worker import Worker

    from bench.baseline import CounterWorkflow
    from common_operations.bootstrap import open_runtime
    from common_operations.grpc.server import build_server
    from common_operations.web.server import serve_http
    from common_operations.worker import run_worker

    settings = service_settings(
        args.database_url, args.temporal_address, args.task_queue, eager_start=not args.no_eager
    )
    async with open_runtime(settings, with_worker=True) as runtime:
        server, grpc_port = await build_server(runtime, "127.0.0.1", args.grpc_port)
        await server.start()
        parts = {
            "lag": watch_loop_lag(lambda ms: print(f"{LAG_PREFIX}{ms:.1f}", flush=True)),
            "worker": run_worker(runtime),
            "rest": serve_http(runtime, "127.0.0.1", args.rest_port),
        }
        if args.baseline_queue:
            baseline = Worker(runtime.client, task_queue=args.baseline_queue, workflows=[CounterWorkflow])
            parts["baseline-worker"] = baseline.run()
        tasks = {asyncio.create_task(coro, name=name): name for name, coro in parts.items()}
        try:
            await wait_listening(args.rest_port)
            await wait_listening(grpc_port)
            ops = settings.operations
            ready = {
                "ready": True,
                "pid": os.getpid(),
                "grpc_port": grpc_port,
                "rest_port": args.rest_port,
                "eager_start": runtime.workflows.eager_start,
                "bytecode_cache_prefix": sys.pycache_prefix,
                "operations": {
                    "progress_interval": ops.progress_interval,
                    "max_reports_per_run": ops.max_reports_per_run,
                    "max_in_flight_reports": ops.max_in_flight_reports,
                    "report_queue_timeout": ops.report_queue_timeout,
                    "remembered_report_ids": ops.remembered_report_ids,
                    "reconcile_interval": ops.reconcile_interval,
                    "orphan_grace": ops.orphan_grace,
                },
                "database_pool_max": settings.database.pool_max,
            }
            print(json.dumps(ready), flush=True)
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                task.result()
            raise RuntimeError(f"{', '.join(tasks[t] for t in done)} stopped on its own")
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await server.stop(grace=None)


async def main(args: argparse.Namespace) -> None:
    """Serve until SIGTERM/SIGINT."""
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, task.cancel)
    with contextlib.suppress(asyncio.CancelledError):
        await serve(args)


def parse_args() -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(prog="python -m bench.serve_service")
    p.add_argument("--database-url", required=True)
    p.add_argument("--temporal-address", required=True)
    p.add_argument("--task-queue", required=True)
    p.add_argument("--rest-port", type=int, required=True)
    p.add_argument("--grpc-port", type=int, default=0, help="0 (default): a free port, printed when ready")
    p.add_argument("--baseline-queue", help="also run a BenchCounterWorkflow worker on this queue")
    p.add_argument("--env-bytecode", action="store_true", help="no bytecode cache (see bench/README.md)")
    p.add_argument("--no-eager", action="store_true", help="temporal.eager_start off")
    return p.parse_args()


@dataclass
class ServiceProcess:
    """A running ``bench.serve_service``: its pid, what its ready line said, its event-loop lag."""

    pid: int
    grpc_port: int
    rest_port: int
    ready: dict[str, Any]
    # (time.perf_counter() here when received, the largest lag of its loop in that second, ms)
    lags: list[tuple[float, float]] = field(default_factory=list)
    # time.perf_counter() here of each TMPRL1104 warning of its worker (a workflow task took > 5 s)
    slow_workflow_tasks: list[float] = field(default_factory=list)

    def lag_since(self, t0: float) -> dict[str, float]:
        """The service loop's lag since ``t0`` (``time.perf_counter()``), see :func:`lag_summary`."""
        return lag_summary(self.lags, t0)

    def slow_workflow_tasks_since(self, t0: float) -> int:
        """How many workflow tasks of its worker took more than 5 s since ``t0``."""
        return sum(t >= t0 for t in self.slow_workflow_tasks)


@contextlib.asynccontextmanager
async def service_process(
    database_url: str,
    temporal_address: str,
    task_queue: str,
    rest_port: int,
    *,
    baseline_queue: str | None = None,
    env_bytecode: bool = False,
    eager: bool = True,
) -> AsyncIterator[ServiceProcess]:
    """Start ``python -m bench.serve_service``, wait for its ready line, stop it (by pid) at the end.

    Raises:
        RuntimeError: it exited or did not get ready within ``READY_TIMEOUT`` seconds.
    """
    command = [
        sys.executable,
        "-m",
        "bench.serve_service",
        "--database-url",
        database_url,
        "--temporal-address",
        temporal_address,
        "--task-queue",
        task_queue,
        "--rest-port",
        str(rest_port),
    ]
    if baseline_queue:
        command += ["--baseline-queue", baseline_queue]
    if env_bytecode:
        command.append("--env-bytecode")
    if not eager:
        command.append("--no-eager")
    proc = await asyncio.create_subprocess_exec(
        *command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=REPO_ROOT
    )
    drains: list[asyncio.Task[None]] = []
    try:
        assert proc.stdout is not None and proc.stderr is not None
        service = ServiceProcess(proc.pid, 0, 0, {})
        # Read its stderr all along (a full pipe would block it), passed on to ours.
        drains.append(asyncio.create_task(_forward_stderr(proc.stderr, service), name="service-stderr"))
        ready: dict[str, Any] | None = None
        async with asyncio.timeout(READY_TIMEOUT):
            while ready is None:
                line = await proc.stdout.readline()
                if not line:
                    raise RuntimeError(f"bench.serve_service exited early (status {await proc.wait()})")
                text = line.decode(errors="replace").strip()
                if text.startswith("{"):
                    ready = json.loads(text)
                elif text:
                    log(f"service: {text}")
        log(f"service process {proc.pid} ready: gRPC :{ready['grpc_port']}, REST :{ready['rest_port']}")
        service.grpc_port, service.rest_port, service.ready = (
            int(ready["grpc_port"]),
            int(ready["rest_port"]),
            ready,
        )
        # Keep reading its stdout too, passed on to our stderr.
        drains.append(asyncio.create_task(_forward(proc.stdout, service), name="service-stdout"))
        yield service
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), STOP_TIMEOUT)
            except TimeoutError:
                log(f"service process {proc.pid} did not stop within {STOP_TIMEOUT:g}s; killing it")
                proc.kill()
                await proc.wait()
        for drain in drains:
            drain.cancel()
        await asyncio.gather(*drains, return_exceptions=True)


async def _forward(stream: asyncio.StreamReader, service: ServiceProcess) -> None:
    while line := await stream.readline():
        text = line.decode(errors="replace").rstrip()
        if text.startswith(LAG_PREFIX):
            lag = float(text.removeprefix(LAG_PREFIX))
            service.lags.append((time.perf_counter(), lag))
            if lag >= LOUD_LAG_MS:
                log(f"  the service's event loop ran {lag / 1000:.1f} s late")
        else:
            print(f"service: {text}", file=sys.stderr, flush=True)


async def _forward_stderr(stream: asyncio.StreamReader, service: ServiceProcess) -> None:
    while line := await stream.readline():
        text = line.decode(errors="replace").rstrip()
        if "TMPRL1104" in text:
            service.slow_workflow_tasks.append(time.perf_counter())
        print(f"service! {text}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    arguments = parse_args()
    if not arguments.env_bytecode:
        enable_bytecode_cache()
    code = 0
    try:
        import uvloop

        uvloop.run(main(arguments))
    except Exception:
        logging.getLogger("bench.serve_service").exception("the service process failed")
        code = 1
    exit_now(code)
