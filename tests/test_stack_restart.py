"""The whole embedded stack (`common-operations run`): Ctrl-C stops everything, a restart loses nothing."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import psutil
import pytest

from tests.helpers import assert_eventually

pytestmark = pytest.mark.slow

TASKS = "/api/v1/operations/tasks"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Stack:
    """One `common-operations run` process group with its own data dir and ports."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.http_port, self.grpc_port = _free_port(), _free_port()
        self.temporal_port, self.ui_port = _free_port(), _free_port()
        self.process: asyncio.subprocess.Process | None = None
        self.url = f"http://127.0.0.1:{self.http_port}"

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

    async def start(self) -> None:
        log = (self.data_dir / "run.log").open("ab")
        self.process = await asyncio.create_subprocess_exec(
            str(Path(sys.executable).parent / "common-operations"),
            "run",
            env=self.env(),
            stdout=log,
            stderr=log,
        )
        log.close()

        async def ready() -> int:
            assert self.process is not None and self.process.returncode is None, self.log()
            try:
                async with httpx.AsyncClient() as c:
                    return (await c.get(f"{self.url}/health/ready", timeout=2)).status_code
            except httpx.HTTPError:
                return 0

        await assert_eventually(ready, lambda code: code == 200, timeout=90, interval=0.5)

    async def stop(self) -> int:
        assert self.process is not None
        self.process.send_signal(signal.SIGINT)
        return await asyncio.wait_for(self.process.wait(), 60)

    def log(self) -> str:
        return (self.data_dir / "run.log").read_text(errors="replace")[-4000:]

    def leftovers(self) -> list[str]:
        found = []
        for proc in psutil.process_iter(["cmdline"]):
            cmd = " ".join(proc.info["cmdline"] or [])
            if str(self.data_dir) in cmd:
                found.append(cmd)
        return found


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[Stack]:
    s = Stack(tmp_path)
    yield s
    if s.process is not None and s.process.returncode is None:
        s.process.kill()
        await s.process.wait()
    for cmd in s.leftovers():  # never leave servers behind, even when the test failed
        for proc in psutil.process_iter(["cmdline"]):
            if " ".join(proc.info["cmdline"] or []) == cmd:
                proc.kill()


async def test_restart_with_tasks_in_flight_loses_nothing(stack: Stack) -> None:
    await stack.start()
    async with httpx.AsyncClient(base_url=stack.url, timeout=30) as api:
        r = await api.post(
            TASKS, json={"taskType": "process", "entityType": "product", "requestedBy": "restart"}
        )
        assert r.status_code == 201, r.text
        working = r.json()["task"]["id"]
        r = await api.patch(f"{TASKS}/{working}/progress", json={"totalRecords": 10, "processedRecords": 3})
        assert r.status_code == 200, r.text
        r = await api.post(
            TASKS, json={"taskType": "data_sync", "entityType": "inventory", "requestedBy": "restart"}
        )
        waiting = r.json()["task"]["id"]

    assert await stack.stop() == 0, stack.log()
    assert stack.leftovers() == [], "processes left running after Ctrl-C"

    await stack.start()
    async with httpx.AsyncClient(base_url=stack.url, timeout=30) as api:
        task = (await api.get(f"{TASKS}/{working}")).json()["task"]
        assert task["status"] == "processing"
        assert task["processedRecords"] == 3 and task["totalRecords"] == 10
        # The workflow survived the restart: it still accepts reports and finishes the task.
        r = await api.patch(
            f"{TASKS}/{working}/progress",
            json={"processedRecords": 10, "successRecords": 10, "isCompleted": True},
        )
        assert r.status_code == 200, r.text
        assert r.json()["task"]["status"] == "completed"

        assert (await api.get(f"{TASKS}/{waiting}")).json()["task"]["status"] == "pending"
        r = await api.patch(f"{TASKS}/{waiting}/progress", json={"processedRecords": 1})
        assert r.status_code == 200, r.text
        assert r.json()["task"]["status"] == "processing"

        events = (await api.get(f"{TASKS}/{working}/events")).json()["events"]
        assert [e["eventType"] for e in events] == ["task.created", "task.started", "task.completed"]
    assert await stack.stop() == 0, stack.log()
    assert stack.leftovers() == []
