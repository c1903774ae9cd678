"""`common-operations run` starts and stops cleanly whatever happens: signals, crashes, a second copy,
busy ports, a foreign server on its Temporal port, a server dying under it.

Every test asserts the message the user sees and that no process of the run remains (by pid).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from common_operations.infra.binaries import wheel_binary
from common_operations.infra.embedded import EmbeddedTemporal
from common_operations.infra.processes import RunRefused
from tests.stack import Stack, alive, free_port

pytestmark = pytest.mark.slow

TASKS = "/api/v1/operations/tasks"


@pytest.fixture
async def stacks(tmp_path: Path) -> AsyncIterator[Callable[..., Stack]]:
    made: list[Stack] = []

    def make(name: str = "data", *, ports_of: Stack | None = None, log_name: str = "run.log") -> Stack:
        stack = Stack(tmp_path / name, ports_of=ports_of, log_name=log_name)
        made.append(stack)
        return stack

    yield make
    for stack in made:  # never leave servers behind, even when the test failed
        await stack.cleanup()


@pytest.fixture
def foreign_temporal(tmp_path: Path) -> Iterator[tuple[psutil.Process, int, Path]]:
    """A dev server nobody's run started (an orphan of another checkout, say): process, port, data dir."""
    port, data_dir = free_port(), tmp_path / "other-checkout"
    data_dir.mkdir()
    args = [wheel_binary("temporal"), "server", "start-dev", "--headless", "--log-level", "error"]
    args += ["--ip", "127.0.0.1", "--port", str(port), "--db-filename", str(data_dir / "temporal.db")]
    popen = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    process = psutil.Process(popen.pid)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert popen.poll() is None and time.monotonic() < deadline, "the dev server did not start"
                time.sleep(0.2)
        yield process, port, data_dir
    finally:
        popen.kill()
        popen.wait()


async def create_task(stack: Stack) -> str:
    async with httpx.AsyncClient(base_url=stack.url, timeout=30) as api:
        r = await api.post(TASKS, json={"taskType": "process", "entityType": "product", "requestedBy": "t"})
        assert r.status_code == 201, r.text
        task_id = str(r.json()["task"]["id"])
        r = await api.patch(f"{TASKS}/{task_id}/progress", json={"totalRecords": 10, "processedRecords": 3})
        assert r.status_code == 200, r.text
        return task_id


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=lambda s: s.name)
async def test_a_signal_stops_every_process_and_the_next_run_starts_its_own(
    stacks: Callable[..., Stack], sig: signal.Signals
) -> None:
    stack = stacks()
    await stack.start()
    servers = stack.servers()
    assert set(servers) == {"temporal", "postgres"}

    assert await stack.stop(sig) == 0, stack.output()
    out = stack.output()
    assert f"{sig.name} received." in out
    assert f"stopped the Temporal dev server (pid {servers['temporal'].pid})" in out
    assert f"stopped Postgres (pid {servers['postgres'].pid})" in out
    assert out.rstrip().endswith(f"stopped ({sig.name}).")
    assert stack.remaining() == [], out

    # Nothing was left for the next run to adopt: it starts (and later stops) servers of its own.
    await stack.start()
    assert "left running" not in stack.output()
    assert not set(stack.servers().values()) & set(servers.values())
    assert await stack.stop(sig) == 0, stack.output()
    assert stack.remaining() == []


async def test_a_busy_port_refuses_the_start_before_anything_starts(stacks: Callable[..., Stack]) -> None:
    stack = stacks()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", stack.http_port))
        taken.listen()
        await stack.launch()
        assert await stack.wait(30) == 2, stack.output()
    out = stack.output()
    assert (
        f"error: cannot start: port {stack.http_port} (REST API, CO_HTTP__PORT) is in use by "
        f"pid {os.getpid()}" in out
    )
    assert "starting" not in out and "Common Operations is running" not in out
    assert not (stack.data_dir / "pg").exists()
    assert stack.remaining() == [], out


@pytest.mark.parametrize("failure", ["port taken meanwhile", "SIGTERM"])
async def test_a_start_failing_half_way_stops_what_it_started(
    stacks: Callable[..., Stack], failure: str
) -> None:
    stack = stacks()
    await stack.launch()
    await stack.wait_for_output("starting Temporal dev server")  # Postgres runs, Temporal is starting
    with socket.socket() as taken:
        if failure == "SIGTERM":
            assert stack.process is not None
            stack.process.send_signal(signal.SIGTERM)
            assert await stack.wait() == 0, stack.output()
        else:
            # Taken after the start-up check (which passed): the REST API fails to listen.
            taken.bind(("127.0.0.1", stack.http_port))
            assert await stack.wait() == 1, stack.output()
    out = stack.output()
    if failure == "SIGTERM":
        assert out.rstrip().endswith("stopped (SIGTERM).")
    else:
        assert f"('127.0.0.1', {stack.http_port}): address already in use" in out  # uvicorn's message
        assert (
            f"error: rest failed: the REST API could not listen on 127.0.0.1:{stack.http_port} "
            "(uvicorn exited with status 3)" in out
        )
        assert "Common Operations is running" not in out
    assert "stopped Postgres (pid" in out
    assert stack.remaining() == [], out


async def test_after_a_crash_the_next_run_stops_the_orphans_and_serves_the_old_tasks(
    stacks: Callable[..., Stack],
) -> None:
    stack = stacks()
    await stack.start()
    task_id = await create_task(stack)
    orphans = stack.servers()
    assert stack.process is not None
    stack.process.kill()  # kill -9: no chance to clean up
    assert await stack.wait() == -signal.SIGKILL
    assert all(alive(p) for p in orphans.values()), "expected the servers to outlive the crashed run"

    await stack.start()
    out = stack.output()
    for name, process in (
        ("the Temporal dev server", orphans["temporal"]),
        ("Postgres", orphans["postgres"]),
    ):
        assert (
            f"stopped {name} (pid {process.pid}) that an earlier run of this data directory left running"
            in out
        )
        assert not alive(process)
    async with httpx.AsyncClient(base_url=stack.url, timeout=30) as api:
        task = (await api.get(f"{TASKS}/{task_id}")).json()["task"]
        assert task["status"] == "processing" and task["processedRecords"] == 3
        r = await api.patch(f"{TASKS}/{task_id}/progress", json={"processedRecords": 10, "isCompleted": True})
        assert r.status_code == 200, r.text
        assert r.json()["task"]["status"] == "completed"
    assert await stack.stop() == 0, stack.output()
    assert stack.remaining() == []


async def test_a_foreign_server_on_the_temporal_port_is_refused(
    stacks: Callable[..., Stack], foreign_temporal: tuple[psutil.Process, int, Path]
) -> None:
    foreign, port, foreign_data = foreign_temporal
    stack = stacks()
    stack.temporal_port = port
    await stack.launch()
    assert await stack.wait(30) == 2, stack.output()
    out = stack.output()
    assert (
        f"error: cannot start: port {port} (Temporal, CO_TEMPORAL__PORT) is in use by a Temporal dev server "
        f"(pid {foreign.pid}) with its database in {foreign_data}"
    ) in out
    assert "starting" not in out
    assert stack.remaining() == [], out
    assert alive(foreign), "a server the run did not start must be left alone"


async def test_the_embedded_temporal_only_uses_the_server_it_started(
    tmp_path: Path, foreign_temporal: tuple[psutil.Process, int, Path]
) -> None:
    # The start-up check above runs first; this is the check behind it, for a server that takes the
    # port in between: a health check answered by the foreign server must not be taken for ours.
    foreign, port, _ = foreign_temporal
    temporal = EmbeddedTemporal(tmp_path / "data", port=port, ui_port=free_port())
    with pytest.raises(RunRefused) as refused:
        await temporal.start(timeout=30)
    spawned = temporal.pid
    assert spawned is not None
    assert f"127.0.0.1:{port} is answered by a Temporal dev server (pid {foreign.pid})" in str(refused.value)
    assert f"not by the Temporal dev server this run started (pid {spawned})" in str(refused.value)
    await temporal.stop()
    assert not psutil.pid_exists(spawned) or not alive(psutil.Process(spawned))
    assert alive(foreign)


async def test_a_second_run_is_refused_and_the_first_keeps_running(stacks: Callable[..., Stack]) -> None:
    first = stacks("data")
    await first.start()
    assert first.process is not None

    same_data_dir = stacks("data", log_name="second.log")  # other ports, same data dir (same checkout)
    await same_data_dir.launch()
    assert await same_data_dir.wait(30) == 2, same_data_dir.output()
    assert (
        f"error: another `common-operations run` (pid {first.process.pid}) is already using the data "
        f"directory {first.data_dir}; stop it first"
    ) in same_data_dir.output()
    assert same_data_dir.remaining() == []

    same_ports = stacks("elsewhere", ports_of=first)  # another checkout on the default ports
    await same_ports.launch()
    assert await same_ports.wait(30) == 2, same_ports.output()
    assert (
        f"error: cannot start: ports {first.http_port} (REST API, CO_HTTP__PORT), "
        f"{first.grpc_port} (gRPC, CO_GRPC__PORT), {first.temporal_port} (Temporal, CO_TEMPORAL__PORT) and "
        f"{first.ui_port} (Temporal Web UI, CO_TEMPORAL__UI_PORT) are in use by another Common "
        f"Operations run (pid {first.process.pid}, data directory {first.data_dir})"
    ) in same_ports.output()
    assert same_ports.remaining() == []

    async with httpx.AsyncClient() as c:
        assert (await c.get(f"{first.url}/health/ready", timeout=5)).status_code == 200
    assert await first.stop() == 0, first.output()
    assert first.remaining() == []


@pytest.mark.parametrize("server", ["temporal", "postgres"])
async def test_a_server_dying_under_the_run_ends_it_with_the_reason(
    stacks: Callable[..., Stack], server: str
) -> None:
    stack = stacks()
    await stack.start()
    victim = stack.servers()[server]
    victim.kill()
    assert await stack.wait(60) == 1, stack.output()
    name = {"temporal": "the Temporal dev server", "postgres": "Postgres"}[server]
    out = stack.output()
    assert f"error: {name} (pid {victim.pid}) exited unexpectedly (killed by SIGKILL)" in out
    assert stack.remaining() == [], out
