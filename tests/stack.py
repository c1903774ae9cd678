"""A whole `common-operations run` as a subprocess, with its own data dir and free ports.

Every process a run starts is tracked by pid (and start time, so a reused pid is never mistaken for
one of ours) while it runs, as a descendant of the run, so a test can assert that none is left
afterwards without looking for processes by name.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sys
from pathlib import Path

import httpx
import psutil

from tests.helpers import assert_eventually


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def alive(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


class Stack:
    """One `common-operations run` process at a time on a data dir, with the processes it started."""

    def __init__(self, data_dir: Path, *, ports_of: Stack | None = None, log_name: str = "run.log") -> None:
        self.data_dir = data_dir
        self.log_path = data_dir / log_name
        if ports_of is not None:
            self.http_port, self.grpc_port = ports_of.http_port, ports_of.grpc_port
            self.temporal_port, self.ui_port = ports_of.temporal_port, ports_of.ui_port
        else:
            self.http_port, self.grpc_port = free_port(), free_port()
            self.temporal_port, self.ui_port = free_port(), free_port()
        self.process: asyncio.subprocess.Process | None = None
        self.url = f"http://127.0.0.1:{self.http_port}"
        self.tracked: set[psutil.Process] = set()
        self._tracker: asyncio.Task[None] | None = None
        self._log_offset = 0

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "TEMPORAL_ADDRESS")}
        env.update(
            CO_DATA_DIR=str(self.data_dir),
            CO_HTTP__HOST="127.0.0.1",
            CO_HTTP__PORT=str(self.http_port),
            CO_GRPC__HOST="127.0.0.1",
            CO_GRPC__PORT=str(self.grpc_port),
            CO_TEMPORAL__PORT=str(self.temporal_port),
            CO_TEMPORAL__UI_PORT=str(self.ui_port),
            CO_TEMPORAL__ADDRESS="",
            CO_DATABASE__URL="",
        )
        return env

    async def launch(self) -> None:
        """Start `common-operations run` without waiting for it to be ready."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        with self.log_path.open("ab") as log:
            self.process = await asyncio.create_subprocess_exec(
                str(Path(sys.executable).parent / "common-operations"),
                "run",
                env=self.env(),
                stdout=log,
                stderr=log,
            )
        self._track(psutil.Process(self.process.pid))
        self._tracker = asyncio.create_task(self._follow(self.process))

    async def start(self) -> None:
        """Start `common-operations run` and wait until the REST API is ready."""
        await self.launch()

        async def ready() -> int:
            assert self.process is not None and self.process.returncode is None, self.output()
            try:
                async with httpx.AsyncClient() as c:
                    return (await c.get(f"{self.url}/health/ready", timeout=2)).status_code
            except httpx.HTTPError:
                return 0

        await assert_eventually(ready, lambda code: code == 200, timeout=90, interval=0.5)
        await self.wait_for_output("Common Operations is running", timeout=10)

    async def wait(self, timeout: float = 60) -> int:
        """Wait for the run to end; its exit status."""
        assert self.process is not None
        return await asyncio.wait_for(self.process.wait(), timeout)

    async def stop(self, sig: signal.Signals = signal.SIGINT) -> int:
        assert self.process is not None
        self.process.send_signal(sig)
        return await self.wait()

    async def wait_for_output(self, text: str, timeout: float = 60) -> None:
        async def seen() -> bool:
            assert self.process is not None and self.process.returncode is None, self.output()
            return text in self.output()

        await assert_eventually(seen, bool, timeout=timeout, interval=0.05)

    def output(self) -> str:
        """What the current (or last) run printed."""
        with self.log_path.open("rb") as log:
            log.seek(self._log_offset)
            return log.read().decode(errors="replace")

    def servers(self) -> dict[str, psutil.Process]:
        """The servers the data dir's pid files name, if they run (checked by start time, as the
        service does, so that a pid reused by an unrelated process is never taken for one of them)."""
        found = {}
        try:
            data = json.loads((self.data_dir / "temporal.pid").read_text())
            found["temporal"] = (int(data["pid"]), float(data["create_time"]), 0.01)
        except (OSError, ValueError, KeyError):
            pass
        try:
            lines = (self.data_dir / "pg" / "postmaster.pid").read_text().splitlines()
            found["postgres"] = (int(lines[0]), float(lines[2]), 2.0)
        except (OSError, ValueError, IndexError):
            pass
        servers = {}
        for name, (pid, started, tolerance) in found.items():
            try:
                process = psutil.Process(pid)
                if abs(process.create_time() - started) < tolerance and alive(process):
                    servers[name] = process
            except psutil.NoSuchProcess:
                pass
        return servers

    def remaining(self) -> list[str]:
        """The tracked processes still running (each as pid and command line)."""
        left = []
        for process in self.tracked:
            if alive(process):
                try:
                    left.append(f"{process.pid}: {' '.join(process.cmdline())}")
                except psutil.Error:
                    left.append(str(process.pid))
        return left

    async def cleanup(self) -> None:
        """Kill whatever is still running of it (by tracked pid), even when the test failed."""
        if self.process is not None and self.process.returncode is None:
            self.process.kill()
            await self.process.wait()
        if self._tracker is not None:
            self._tracker.cancel()
        for process in self.tracked:
            if alive(process):
                process.kill()

    def _track(self, process: psutil.Process) -> None:
        self.tracked.add(process)

    async def _follow(self, process: asyncio.subprocess.Process) -> None:
        # Collect the run's descendants while it lives (the servers, initdb, Postgres backends): the
        # servers stay its children until it dies, far longer than one polling interval.
        root = psutil.Process(process.pid)
        while process.returncode is None:
            try:
                for child in root.children(recursive=True):
                    self._track(child)
            except psutil.NoSuchProcess:
                break
            await asyncio.sleep(0.1)
