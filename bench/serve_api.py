"""The REST API alone, for ``bench.api`` to load from another process.

    python -m bench.serve_api --database-url URL --temporal-address HOST:PORT --port PORT
        [--loop asyncio|uvloop] [--pool-max N]

Runs exactly what ``common-operations api`` runs for REST: ``open_runtime`` (asyncpg pool through
Piccolo, a Temporal client) and ``serve_http`` (uvicorn inside the already running event loop).
The CLI runs uvloop (the default here too); ``--loop asyncio`` measures the plain loop.
It prints ``ready`` on stdout
once the socket answers, and stops on SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal

from bench.auth import auth_settings
from bench.common import exit_now
from common_operations.bootstrap import open_runtime
from common_operations.config import Settings
from common_operations.web.server import serve_http


async def wait_listening(port: int, timeout: float = 30.0) -> None:
    """Until 127.0.0.1:``port`` accepts connections."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            if loop.time() > deadline:
                raise
            await asyncio.sleep(0.05)
            continue
        writer.close()
        await writer.wait_closed()
        return


async def serve(args: argparse.Namespace) -> None:
    """Open the runtime and serve REST until cancelled."""
    database: dict[str, object] = {"url": args.database_url}
    if args.pool_max:
        database["pool_max"] = args.pool_max
    settings = Settings(
        database_url=args.database_url,
        temporal_address=args.temporal_address,
        temporal={"address": args.temporal_address, "task_queue": "bench-api"},
        database=database,
        **auth_settings(),
    )
    async with open_runtime(settings) as runtime:
        server = asyncio.create_task(serve_http(runtime, "127.0.0.1", args.port), name="rest")
        await wait_listening(args.port)
        print("ready", flush=True)
        await server


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
    p = argparse.ArgumentParser(prog="python -m bench.serve_api")
    p.add_argument("--database-url", required=True)
    p.add_argument("--temporal-address", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--loop", choices=("asyncio", "uvloop"), default="uvloop")
    p.add_argument("--pool-max", type=int, default=0, help="asyncpg pool size (default: the service's)")
    return p.parse_args()


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    arguments = parse_args()
    code = 0
    try:
        if arguments.loop == "uvloop":
            import uvloop

            uvloop.run(main(arguments))
        else:
            asyncio.run(main(arguments))
    except Exception:
        logging.getLogger("bench.serve_api").exception("the API server failed")
        code = 1
    exit_now(code)
