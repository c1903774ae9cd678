"""``common-operations``: run the whole service, or one part of it.

- ``run``: embedded Postgres and Temporal dev server (unless configured otherwise), migrations, then
  REST, gRPC and the worker in one supervised process. Ctrl-C, SIGTERM or a part that dies stops
  everything it started, in order; a second run of the same data directory is refused.
- ``api`` / ``worker`` / ``migrate``: the parts separately, against configured servers
  (what docker-compose uses).
- ``tasks``: operator commands against a running service over HTTP (list, show, watch, cancel,
  retry, logs, bulk cancel|retry; ``common_operations.cli_tasks``) and ``reconcile`` (a reconciler
  pass with the service's own configuration).
- ``keys``: API keys of services (create, list, revoke), straight in the database.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from typing import TYPE_CHECKING, Annotated, Any

import typer
import uvloop

from common_operations.cli_tasks import register as register_task_commands
from common_operations.config import Settings, get_settings
from common_operations.infra.processes import ComponentFailed, RunRefused

if TYPE_CHECKING:
    from common_operations.infra.embedded import EmbeddedServer, EmbeddedTemporal
    from common_operations.infra.ports import Listener

app = typer.Typer(help=__doc__, no_args_is_help=True, add_completion=False)
tasks_app = typer.Typer(
    help="Operator commands on tasks, against a running service over HTTP (reconcile: its database).",
    no_args_is_help=True,
)
app.add_typer(tasks_app, name="tasks")
# list, show, watch, cancel, retry, logs, bulk cancel|retry: REST calls (common_operations.cli_tasks).
register_task_commands(tasks_app)
keys_app = typer.Typer(help="API keys of services (x-api-key): create, list, revoke.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")

log = logging.getLogger("common_operations")

# Longest wait for REST, gRPC (5 s of grace itself) and the worker to stop before `run` stops the
# servers behind them regardless.
SERVICE_STOP_TIMEOUT = 30.0


def _configure_logging(settings: Settings) -> None:
    # One handler for the whole process (ours, uvicorn's, the Temporal SDK's): JSON lines, or
    # plain lines on a terminal (observability.log_format); see infra.logs.
    from common_operations.infra.logs import configure_logging

    configure_logging(settings)


def _exit(code: int) -> None:
    # temporalio's native runtime can crash during interpreter finalisation (sdk-python#300);
    # all work is done and flushed by now, so leave without finalising.
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # a closed terminal
            stream.flush()
    os._exit(code)


def _say(text: str) -> None:
    # Progress goes to stdout; a closed terminal must not break the shutdown that its SIGHUP started.
    with contextlib.suppress(OSError, ValueError):
        print(text, flush=True)


def _error(text: str) -> None:
    with contextlib.suppress(OSError, ValueError):
        print(f"error: {text}", file=sys.stderr, flush=True)


def _stop_signals() -> list[signal.Signals]:
    signals = [signal.SIGINT, signal.SIGTERM]
    # A closed terminal stops the run in order too, unless it runs under nohup (SIGHUP ignored).
    if signal.getsignal(signal.SIGHUP) is not signal.SIG_IGN:
        signals.append(signal.SIGHUP)
    return signals


def _main(coro_fn: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """Run ``coro_fn`` until it returns, fails, or a signal asks it to stop; then exit.

    SIGINT, SIGTERM and SIGHUP are handled alike: the first one cancels ``coro_fn``, whose cleanup
    then runs to its end (every stop step is bounded in time); later ones only say it is under way,
    since cancelling the cleanup itself would leave servers running.

    Exit status: 0 when ``coro_fn`` returned or a signal stopped it, 1 when something failed (a part
    that did not start or that died), 2 when ``run`` refused to start (nothing was left running).
    """
    received: list[signal.Signals] = []

    async def supervised() -> None:
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None

        def on_signal(sig: signal.Signals) -> None:
            if received:
                _say(f"{sig.name} received: already stopping, every step has a time limit ...")
                return
            received.append(sig)
            _say(f"{sig.name} received.")
            task.cancel()

        for sig in _stop_signals():
            loop.add_signal_handler(sig, on_signal, sig)
        try:
            await coro_fn()
        except asyncio.CancelledError:
            if not received:
                raise

    code = 0
    # uvloop (from uvicorn[standard]) roughly halves the event loop's own cost, which is a large
    # share of the API's and the worker's CPU (bench/README.md).
    runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
    try:
        # Not closed afterwards: closing waits for every task left, and a part that hung on its way
        # out (given up on, see _serve_watched) would hang the exit. The process ends right below.
        runner.run(supervised())
        if received:
            _say(f"stopped ({received[0].name}).")
    except RunRefused as exc:
        _error(str(exc))
        code = 2
    except ComponentFailed as exc:
        cause = exc.__cause__
        if cause is not None and not isinstance(cause, OSError | ComponentFailed | RunRefused):
            log.error("%s", exc, exc_info=cause)  # a bug rather than an environment problem: keep the trace
        _error(str(exc))
        code = 1
    except SystemExit as exc:
        # A library calling sys.exit() inside a task (uvicorn does when it cannot listen; serve_http
        # turns that into an OSError) escapes the event loop, past our cleanup. Closing the runner
        # cancels every task left, so the cleanup runs now.
        with contextlib.suppress(BaseException):
            runner.close()
        _error(f"a part of the service exited (status {exc.code}); see the messages above")
        code = 1
    except Exception:
        log.exception("stopped by an error")
        code = 1
    _exit(code)


async def _supervise(**parts: Coroutine[Any, Any, None]) -> None:
    """Run the parts together; if one ends or fails, stop the others (no half-running service).

    Raises:
        ComponentFailed: naming the part that ended or failed, and why.
        RunRefused: a part refused to go on (it found a server it must not use).
    """
    tasks = [asyncio.create_task(coro, name=name) for name, coro in parts.items()]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for t in done:
            exc = t.exception()
            if isinstance(exc, ComponentFailed | RunRefused):
                raise exc
            if exc is not None:
                raise ComponentFailed(f"{t.get_name()} failed: {exc}") from exc
            raise ComponentFailed(f"{t.get_name()} stopped unexpectedly")
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def _announce_when_listening(banner: str, endpoints: Sequence[tuple[str, int]]) -> None:
    """Print ``banner`` once every endpoint accepts connections, then idle until cancelled.

    A supervised part, so a server that fails to listen ends the run before the banner says it runs.
    """
    for host, port in endpoints:
        target = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
        while True:
            try:
                _, writer = await asyncio.open_connection(target, port)
            except OSError:
                await asyncio.sleep(0.1)
                continue
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
            break
    _say(banner)
    await asyncio.Event().wait()


async def _serve(
    settings: Settings,
    *,
    with_worker: bool,
    with_api: bool,
    banner: str = "",
) -> None:
    """Serve the chosen parts until cancelled or until one of them ends.

    Args:
        settings: where everything listens and connects.
        with_worker: run the Temporal worker and the reconciler.
        with_api: serve REST and gRPC.
        banner: printed once REST and gRPC accept connections.
    """
    from common_operations.bootstrap import open_runtime
    from common_operations.infra import telemetry
    from common_operations.infra.temporal import ensure_search_attributes

    # Tracing (if configured) is set up before the runtime's Temporal client connects, and its
    # buffered spans are exported after the runtime closes.
    async with (
        telemetry.tracing(settings.observability),
        open_runtime(settings, with_worker=with_worker) as runtime,
    ):
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
        # Every process refreshes the global gauges (tasks in flight, stuck, outbox lag) and drains
        # the Temporal SDK's metrics; a worker on its own serves them on a /metrics of its own.
        from common_operations.infra.metrics.gauges import refresher_for

        parts["metrics"] = refresher_for(runtime).run()
        metrics_port = settings.observability.worker_metrics_port
        if with_worker and not with_api and metrics_port:
            from common_operations.web.metrics import serve_metrics

            parts["metrics-http"] = serve_metrics(runtime, settings.http.host, metrics_port)
        if banner:
            endpoints = [(settings.http.host, settings.http.port), (settings.grpc.host, settings.grpc.port)]
            parts["banner"] = _announce_when_listening(banner, endpoints if with_api else [])
        await _supervise(**parts)


def _banner(settings: Settings, temporal_ui: str | None) -> str:
    host = "127.0.0.1" if settings.http.host in ("0.0.0.0", "") else settings.http.host
    base = f"{'https' if settings.http.tls_cert_file else 'http'}://{host}:{settings.http.port}"
    grpc_extras = ("TLS, " if settings.grpc.tls_cert_file else "") + (
        "reflection + health" if settings.grpc.reflection else "health"
    )
    lines = [
        "",
        "Common Operations is running (Ctrl-C stops everything):",
        f"  REST API        {base}/api/v1/operations/tasks",
        f"  Console         {base}/console",
        f"  API docs        {base}/docs" if settings.http.docs else "  API docs        off (http.docs)",
        f"  Metrics         {base}/metrics",
        f"  gRPC            {host}:{settings.grpc.port}  ({grpc_extras})",
        f"  Temporal        {settings.temporal.address}  namespace {settings.temporal.namespace}",
    ]
    if temporal_ui:
        lines.append(f"  Temporal Web UI {temporal_ui}")
    lines.append(f"  Data            {settings.data_dir}")
    return "\n".join(lines) + "\n"


def _guard_exposure(settings: Settings) -> None:
    """Refuse dev auth mode on a non-loopback listener before anything starts; warn loudly in dev mode.

    Raises:
        typer.Exit: status 2, the configuration must not serve (nothing was started).
    """
    from common_operations.infra.exposure import dev_mode_exposure, dev_mode_warning

    if (problem := dev_mode_exposure(settings)) is not None:
        _error(problem)
        raise typer.Exit(2)
    if (warning := dev_mode_warning(settings)) is not None:
        with contextlib.suppress(OSError, ValueError):
            print(f"\n*** {warning} ***\n", file=sys.stderr, flush=True)


@app.command()
def run() -> None:
    """Start everything: embedded Postgres and Temporal (unless configured), REST, gRPC, worker."""
    settings = get_settings()
    _guard_exposure(settings)
    _configure_logging(settings)
    _main(lambda: _run(settings))


async def _run(settings: Settings) -> None:
    """The ``run`` command: own the data directory, start the servers, serve; stop all of it in reverse."""
    from common_operations.db.engine import migrate
    from common_operations.infra.embedded import EmbeddedPostgres, EmbeddedTemporal
    from common_operations.infra.ownership import RunLock
    from common_operations.infra.ports import ensure_free

    postgres = EmbeddedPostgres(settings.data_dir) if not settings.database.url else None
    temporal = (
        EmbeddedTemporal(settings.data_dir, settings.temporal.port, settings.temporal.ui_port)
        if not settings.temporal.address
        else None
    )
    async with contextlib.AsyncExitStack() as stack:
        # Everything below is undone in reverse, whether the run ends by a signal, by a part that
        # failed or died, or half-way through starting.
        stack.enter_context(RunLock.acquire(settings.data_dir))
        for server in (temporal, postgres):
            if server is not None and (pid := await server.stop_orphan()) is not None:
                _say(
                    f"stopped {server.name} (pid {pid}) that an earlier run of this data directory "
                    "left running when it did not stop cleanly"
                )
        ensure_free(_listeners(settings, temporal))
        watch: dict[str, Callable[[], Coroutine[Any, Any, None]]] = {}
        try:
            if postgres is not None:
                _say("starting embedded Postgres ...")
                stack.push_async_callback(_stop_server, postgres)
                settings.database.url = await postgres.start()
                watch["postgres"] = postgres.watch
            if temporal is not None:
                _say("starting Temporal dev server with Web UI ...")
                stack.push_async_callback(_stop_server, temporal)
                settings.temporal.address = await temporal.start(settings.temporal.namespace)
                watch["temporal"] = temporal.watch
                # Tasks link to the embedded Web UI unless another UI is configured.
                settings.temporal.ui_base_url = settings.temporal.ui_base_url or temporal.ui_url
            _say("applying migrations ...")
            assert settings.database.url is not None
            await migrate(settings.database.url)
            banner = _banner(settings, temporal.ui_url if temporal else None)
            await _serve_watched(settings, banner, watch)
        finally:
            _say("stopping ...")


async def _serve_watched(
    settings: Settings, banner: str, watch: Mapping[str, Callable[[], Coroutine[Any, Any, None]]]
) -> None:
    """Serve until cancelled or until a watched server dies.

    The service's own stop is bounded in time: if a part of it hangs, the servers behind it are
    stopped all the same (and the process exits without waiting for the hung part).

    Raises:
        ComponentFailed: a watched server died, or a part of the service failed.
    """
    service = asyncio.create_task(_serve(settings, with_worker=True, with_api=True, banner=banner))
    watchers = [asyncio.create_task(watcher(), name=name) for name, watcher in watch.items()]
    try:
        await asyncio.wait([service, *watchers], return_when=asyncio.FIRST_COMPLETED)
        for task in (*watchers, service):
            if task.done():
                task.result()
        raise ComponentFailed("the service stopped unexpectedly")
    finally:
        for watcher in watchers:
            watcher.cancel()
        service.cancel()
        if not (await asyncio.wait([service], timeout=SERVICE_STOP_TIMEOUT))[0]:
            log.warning(
                "the API, gRPC or the worker did not stop within %gs; stopping the servers regardless",
                SERVICE_STOP_TIMEOUT,
            )
        await asyncio.gather(*watchers, return_exceptions=True)


async def _stop_server(server: EmbeddedServer) -> None:
    if (pid := await server.stop()) is not None:
        _say(f"stopped {server.name} (pid {pid})")


def _listeners(settings: Settings, temporal: EmbeddedTemporal | None) -> list[Listener]:
    from common_operations.infra.ports import Listener

    listeners = [
        Listener("REST API", settings.http.host, settings.http.port, "CO_HTTP__PORT"),
        Listener("gRPC", settings.grpc.host, settings.grpc.port, "CO_GRPC__PORT"),
    ]
    if temporal is not None:
        listeners += [
            Listener("Temporal", temporal.ip, temporal.port, "CO_TEMPORAL__PORT"),
            Listener("Temporal Web UI", temporal.ip, temporal.ui_port, "CO_TEMPORAL__UI_PORT"),
        ]
    return listeners


@app.command()
def api() -> None:
    """Serve REST and gRPC against the configured Postgres and Temporal."""
    settings = get_settings()
    _guard_exposure(settings)
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


@tasks_app.command("reconcile")
def tasks_reconcile() -> None:
    """Run one reconciler pass now (terminated runs, tasks without a run, stuck runs)."""
    from dataclasses import asdict

    async def fn(runtime: Any) -> dict[str, Any]:
        return asdict(await runtime.reconciler().run_once())

    _with_runtime(fn)


def _embedded_database_url(settings: Settings) -> str | None:
    """The URL of the embedded Postgres a running ``run`` of this data directory started, if any."""
    from common_operations.infra.embedded import DATABASE_NAME

    # postmaster.pid: pid, data dir, start time, port, socket directory, listen address, shmem, status.
    try:
        lines = (settings.data_dir / "pg" / "postmaster.pid").read_text().splitlines()
        port, socket_dir, status = int(lines[3]), lines[4].strip(), lines[7].strip()
    except (OSError, ValueError, IndexError):
        return None
    if status != "ready" or not socket_dir:
        return None
    return f"postgresql://postgres:@/{DATABASE_NAME}?host={socket_dir}&port={port}"


def _with_api_keys(fn: Callable[[Any, Any], Awaitable[None]]) -> None:
    """Run ``fn(service, actor)`` on the configured database; domain errors exit 1 with their message.

    Only Postgres is needed (not Temporal): the configured ``database.url``, or else the embedded
    server of a running ``common-operations run`` (``make run``) of the same data directory.
    """
    import getpass

    import asyncpg

    from common_operations.domain.errors import DomainError
    from common_operations.domain.principal import ADMIN_ROLE, Principal

    settings = get_settings()
    _configure_logging(settings)
    url = settings.database.url or _embedded_database_url(settings)
    if not url:
        _error(
            "no database: set DATABASE_URL (or database.url), or start the service with `make run` "
            f"first (its embedded Postgres under {settings.data_dir})"
        )
        raise typer.Exit(2)
    # Whoever can run this with the service's configuration can reach its database: an admin.
    actor = Principal(f"cli:{getpass.getuser()}", frozenset({ADMIN_ROLE}), via="internal")

    async def main() -> None:
        from common_operations.db.api_keys_repository import ApiKeysRepository
        from common_operations.services.api_keys import ApiKeysService

        pool = await asyncpg.create_pool(url, min_size=1, max_size=2)
        try:
            await fn(ApiKeysService(ApiKeysRepository(pool)), actor)
        finally:
            await pool.close()

    try:
        asyncio.run(main())
    except DomainError as exc:
        _error(exc.message)
        raise typer.Exit(1) from None
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        _error(f"cannot use the database: {exc}")
        raise typer.Exit(1) from None


_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def _expiry(expires_in: str | None, expires_at: str | None) -> Any:
    """``--expires-in 90d`` / ``--expires-at 2027-01-01T00:00:00Z`` as an aware datetime (or None)."""
    from datetime import UTC, datetime, timedelta

    if expires_in and expires_at:
        raise typer.BadParameter("give --expires-in or --expires-at, not both")
    if expires_in:
        text = expires_in.strip().lower()
        unit = _DURATION_UNITS.get(text[-1:])
        try:
            amount = float(text[:-1]) if unit else float("nan")
        except ValueError:
            amount = float("nan")
        if unit is None or not amount > 0 or amount * unit > 100 * 365 * 86400:
            raise typer.BadParameter("--expires-in takes a positive number and s, m, h, d or w (e.g. 90d)")
        return datetime.now(UTC) + timedelta(seconds=amount * unit)
    if expires_at:
        try:
            when = datetime.fromisoformat(expires_at.strip().replace("Z", "+00:00"))
        except ValueError as exc:
            raise typer.BadParameter(f"--expires-at: not an ISO 8601 instant ({exc})") from None
        if when.tzinfo is None:
            raise typer.BadParameter("--expires-at needs a time zone (e.g. 2027-01-01T00:00:00Z)")
        return when
    return None


def _key_json(record: Any) -> dict[str, Any]:
    data: dict[str, Any] = record.public()
    data["lastUsedAt"] = record.last_used_at.isoformat() if record.last_used_at else None
    return data


@keys_app.command("create")
def keys_create(
    principal: str = typer.Option(..., help="the name callers with this key act as, e.g. catalog-service"),
    role: Annotated[
        list[str] | None, typer.Option("--role", help="a role of the key (repeatable): service, operator, …")
    ] = None,
    expires_in: str | None = typer.Option(None, help="lifetime, e.g. 90d, 12h, 2w (default: no expiry)"),
    expires_at: str | None = typer.Option(None, help="expiry instant, ISO 8601 with a time zone"),
    description: str = typer.Option("", help="what the key is for"),
    as_json: bool = typer.Option(False, "--json", help="print the key and its record as JSON"),
) -> None:
    """Create a key and print it once: it is stored only as a hash and cannot be shown again."""
    expiry = _expiry(expires_in, expires_at)

    async def fn(service: Any, actor: Any) -> None:
        created = await service.create(
            actor, principal, role or [], description=description, expires_at=expiry
        )
        record = created.record
        if as_json:
            print(json.dumps({"key": created.key, **_key_json(record)}, indent=2))
            return
        roles = ", ".join(record.roles) or "none"
        expires = record.expires_at.isoformat() if record.expires_at else "never"
        print(f"API key for {record.principal} (roles: {roles}; expires: {expires})")
        print(f"  id      {record.id}")
        print(f"  prefix  {record.prefix}")
        print()
        print(f"  {created.key}")
        print()
        print("Store it now: it is not shown again. Callers send it as `x-api-key: <key>`.")

    _with_api_keys(fn)


@keys_app.command("list")
def keys_list(
    show_all: bool = typer.Option(False, "--all", help="include revoked keys"),
    as_json: bool = typer.Option(False, "--json", help="print JSON instead of a table"),
) -> None:
    """List keys (newest first): prefix, principal, roles, created, expires, revoked, last used."""

    async def fn(service: Any, actor: Any) -> None:
        records: list[Any] = []
        page = 1
        while True:
            found = await service.list_keys(actor, include_revoked=show_all, page=page, page_size=1000)
            records += found.keys
            if len(records) >= found.total or not found.keys:
                break
            page += 1
        if as_json:
            print(json.dumps([_key_json(r) for r in records], indent=2))
            return

        def when(value: Any) -> str:
            return value.strftime("%Y-%m-%d %H:%M") if value else "-"

        header = ("ID", "PREFIX", "PRINCIPAL", "ROLES", "CREATED", "EXPIRES", "REVOKED", "LAST USED")
        rows = [
            (
                str(r.id),
                r.prefix,
                r.principal,
                ",".join(r.roles) or "-",
                when(r.created_at),
                when(r.expires_at),
                when(r.revoked_at),
                when(r.last_used_at),
            )
            for r in records
        ]
        widths = [max([len(h), *(len(row[i]) for row in rows)]) for i, h in enumerate(header)]
        for line in (header, *rows):
            print("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(line)).rstrip())
        if not rows:
            print("(no keys)")

    _with_api_keys(fn)


@keys_app.command("revoke")
def keys_revoke(id_or_prefix: str = typer.Argument(..., help="the key's id or its prefix")) -> None:
    """Revoke a key: it stops working at once (revoking a revoked key changes nothing)."""

    async def fn(service: Any, actor: Any) -> None:
        record = await service.revoke(actor, id_or_prefix)
        print(f"revoked {record.prefix} ({record.principal}) at {record.revoked_at.isoformat()}")

    _with_api_keys(fn)


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
