"""HTTP load generators for ``bench.api``: wrk when it is on PATH, else a multi-process Python one.

Both run closed-loop keep-alive connections against 127.0.0.1, cycle over a list of request paths,
and report requests/s and latency percentiles in the same shape.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.common import percentile

# wrk's Lua hooks: each thread cycles over the paths from its own random start; ``done`` prints the
# summary as one JSON line (latencies in microseconds).
WRK_SCRIPT = r"""
local paths = {}
local i = 0
headers = {}
init = function(args)
  for line in io.lines(args[1]) do paths[#paths + 1] = line end
  for line in io.lines(args[2]) do
    local name, value = line:match("^([^:]+):%s*(.*)$")
    if name then headers[name] = value end
  end
  math.randomseed(os.time() + tonumber(tostring({}):sub(8), 16))
  i = math.random(#paths)
end
request = function()
  i = i % #paths + 1
  return wrk.format("GET", paths[i], headers)
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{"requests": %d, "duration_us": %d, "errors": {"connect": %d, "read": %d, "write": %d, ' ..
    '"status": %d, "timeout": %d}, "p50_us": %d, "p90_us": %d, "p99_us": %d, "max_us": %d, ' ..
    '"mean_us": %.1f}\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max, latency.mean))
end
"""


@dataclass
class LoadResult:
    """What one load run measured."""

    requests: int
    duration_s: float
    rps: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    errors: int
    tool: str


def wrk_path() -> str | None:
    """``wrk`` if installed (``apt-get install -y wrk``)."""
    return shutil.which("wrk")


def run_wrk(
    base_url: str, paths: list[str], connections: int, duration: float, headers: dict[str, str] | None = None
) -> LoadResult:
    """One wrk run (one thread: the box has 2 cores and the server needs one)."""
    wrk = wrk_path()
    assert wrk is not None
    with tempfile.TemporaryDirectory(prefix="co-bench-wrk-") as tmp:
        script = Path(tmp) / "paths.lua"
        script.write_text(WRK_SCRIPT, encoding="utf-8")
        listing = Path(tmp) / "paths.txt"
        listing.write_text("\n".join(paths) + "\n", encoding="utf-8")
        header_file = Path(tmp) / "headers.txt"
        header_file.write_text("".join(f"{k}: {v}\n" for k, v in (headers or {}).items()), encoding="utf-8")
        command = [wrk, "-t1", f"-c{connections}", f"-d{max(1, round(duration))}s", "--timeout", "10s"]
        out = subprocess.run(
            [*command, "-s", str(script), base_url, "--", str(listing), str(header_file)],
            capture_output=True,
            text=True,
            check=True,
            timeout=duration + 60,
        ).stdout
    line = next(x for x in reversed(out.splitlines()) if x.startswith("{"))
    data: dict[str, Any] = json.loads(line)
    duration_s = data["duration_us"] / 1e6
    return LoadResult(
        requests=data["requests"],
        duration_s=duration_s,
        rps=data["requests"] / duration_s,
        p50_ms=data["p50_us"] / 1000,
        p90_ms=data["p90_us"] / 1000,
        p99_ms=data["p99_us"] / 1000,
        max_ms=data["max_us"] / 1000,
        errors=sum(data["errors"].values()),
        tool="wrk",
    )


# --- the Python fallback ------------------------------------------------------------------------------


async def _connection_loop(
    host: str,
    port: int,
    paths: list[str],
    start: int,
    deadline: float,
    latencies: list[float],
    headers: dict[str, str],
) -> int:
    """One keep-alive connection sending GETs until ``deadline``; returns the error count."""
    reader, writer = await asyncio.open_connection(host, port)
    extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    requests = [f"GET {p} HTTP/1.1\r\nHost: {host}:{port}\r\n{extra}\r\n".encode() for p in paths]
    errors = 0
    i = start
    try:
        while time.perf_counter() < deadline:
            i = (i + 1) % len(requests)
            t = time.perf_counter()
            writer.write(requests[i])
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head[9:12])
            length = 0
            for line in head.split(b"\r\n"):
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            if length:
                await reader.readexactly(length)
            latencies.append(time.perf_counter() - t)
            if status >= 400:
                errors += 1
    finally:
        writer.close()
    return errors


def _process_main(
    host: str,
    port: int,
    paths: list[str],
    connections: int,
    duration: float,
    seed: int,
    out: Any,
    headers: dict[str, str],
) -> None:
    async def run() -> tuple[list[float], int]:
        latencies: list[float] = []
        deadline = time.perf_counter() + duration
        step = max(1, len(paths) // max(1, connections))
        errors = await asyncio.gather(
            *(
                _connection_loop(host, port, paths, seed + k * step, deadline, latencies, headers)
                for k in range(connections)
            )
        )
        return latencies, sum(errors)

    out.put(asyncio.run(run()))


def run_python(
    base_url: str,
    paths: list[str],
    connections: int,
    duration: float,
    processes: int = 2,
    headers: dict[str, str] | None = None,
) -> LoadResult:
    """The fallback: ``processes`` processes sharing ``connections`` raw-socket keep-alive connections."""
    from urllib.parse import urlsplit

    parts = urlsplit(base_url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    processes = max(1, min(processes, connections))
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    shares = [connections // processes + (1 if k < connections % processes else 0) for k in range(processes)]
    workers = [
        ctx.Process(
            target=_process_main, args=(host, port, paths, n, duration, k * 7919, queue, headers or {})
        )
        for k, n in enumerate(shares)
    ]
    t0 = time.perf_counter()
    for w in workers:
        w.start()
    collected = [queue.get(timeout=duration + 60) for _ in workers]
    for w in workers:
        w.join(timeout=30)
    elapsed = time.perf_counter() - t0
    latencies = sorted(x for lat, _ in collected for x in lat)
    errors = sum(e for _, e in collected)
    return LoadResult(
        requests=len(latencies),
        duration_s=min(elapsed, duration),
        rps=len(latencies) / duration,
        p50_ms=percentile(latencies, 50) * 1000,
        p90_ms=percentile(latencies, 90) * 1000,
        p99_ms=percentile(latencies, 99) * 1000,
        max_ms=(latencies[-1] if latencies else 0.0) * 1000,
        errors=errors,
        tool="python",
    )


def run_load(
    base_url: str,
    paths: list[str],
    connections: int,
    duration: float,
    tool: str,
    headers: dict[str, str] | None = None,
) -> LoadResult:
    """Dispatch to wrk or the Python generator; ``headers`` go with every request."""
    if tool == "wrk":
        return run_wrk(base_url, paths, connections, duration, headers)
    return run_python(base_url, paths, connections, duration, headers=headers)
