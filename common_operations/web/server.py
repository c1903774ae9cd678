"""Serving the REST API with uvicorn inside an already running event loop."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator

import uvicorn

from common_operations.bootstrap import Runtime
from common_operations.web.app import create_app


class _Server(uvicorn.Server):
    """Uvicorn without its signal handling: the process supervisor owns SIGINT/SIGTERM."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        """Leave the process's signal handlers alone."""
        yield


async def serve_http(runtime: Runtime, host: str, port: int) -> None:
    """Serve the REST API until this coroutine's task is cancelled.

    Uvicorn runs programmatically (no signal handlers of its own: the process supervisor owns them).
    On cancellation the server is asked to exit and awaited, so open requests finish and the socket
    is closed before the cancellation propagates.

    Serves HTTPS when ``http.tls_cert_file`` and ``http.tls_key_file`` are configured.

    Args:
        runtime: connected services; not closed here.
        host: interface to listen on.
        port: TCP port.

    Raises:
        OSError: the address cannot be bound.
    """
    http = runtime.settings.http
    tls = http.tls_cert_file is not None and http.tls_key_file is not None
    config = uvicorn.Config(
        create_app(runtime),
        host=host,
        port=port,
        log_level="warning",
        # No logging config of uvicorn's own: its loggers propagate to the process's one handler
        # (infra.logs), so its lines are JSON like every other.
        log_config=None,
        access_log=False,
        lifespan="off",
        # HTTPS only when both are set (plain HTTP to this port then fails the handshake).
        ssl_certfile=str(http.tls_cert_file) if tls else None,
        ssl_keyfile=str(http.tls_key_file) if tls else None,
        # No "server: uvicorn" header: the answer need not say what serves it.
        server_header=False,
    )
    server = _Server(config)

    async def serve() -> None:
        try:
            await server.serve()
        except SystemExit as exc:
            # Uvicorn exits the interpreter when it cannot bind. Caught inside the task: a SystemExit
            # leaving a task escapes the event loop itself, past every cleanup of the run.
            raise OSError(
                f"the REST API could not listen on {host}:{port} (uvicorn exited with status {exc.code})"
            ) from None

    serving = asyncio.ensure_future(serve())
    try:
        await asyncio.shield(serving)
    except asyncio.CancelledError:
        # Open task streams first: uvicorn waits for every open response before it exits, and an
        # event stream would only end with its task.
        if runtime.watcher is not None:
            await runtime.watcher.close()
        server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError, OSError):
            await serving
        raise
