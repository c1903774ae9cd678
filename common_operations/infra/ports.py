"""Checking, before ``run`` starts anything, that the ports it will listen on are free.

A busy port found only when a server binds it means a half-started run to undo, and for the Temporal
port a worse outcome: a health check answered by somebody else's server. So every port is tried
first, and each busy one is reported with who holds it, naming the data directory when the holder is
another run of this service.
"""

from __future__ import annotations

import contextlib
import errno
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import psutil

from common_operations.infra.ownership import run_data_dir
from common_operations.infra.processes import RunRefused


@dataclass(frozen=True)
class Listener:
    """A port the run will listen on, and the setting that moves it."""

    what: str
    host: str
    port: int
    setting: str

    def __str__(self) -> str:
        return f"{self.port} ({self.what}, {self.setting})"


def ensure_free(listeners: Iterable[Listener]) -> None:
    """Check that every listener's port can be bound.

    Raises:
        RunRefused: one or more cannot; the message names each port, what it is for, the setting that
            moves it, and who holds it (ports held by the same process are named together).
    """
    held: dict[str, list[Listener]] = {}
    problems = []
    for listener in listeners:
        error = _bind_error(listener.host, listener.port)
        if error is None:
            continue
        if error.errno == errno.EADDRINUSE:
            held.setdefault(port_owner(listener.port), []).append(listener)
        else:
            problems.append(f"cannot listen on {listener.host} port {listener}: {error.strerror}")
    for owner, taken in held.items():
        if len(taken) == 1:
            problems.append(f"port {taken[0]} is in use by {owner}")
        else:
            ports = ", ".join(map(str, taken[:-1])) + f" and {taken[-1]}"
            problems.append(f"ports {ports} are in use by {owner}")
    if problems:
        raise RunRefused("cannot start: " + "; ".join(problems))


def listening_pids(port: int) -> list[int]:
    """The processes listening on TCP ``port`` that this user may see."""
    try:
        return sorted(
            {
                conn.pid
                for conn in psutil.net_connections(kind="tcp")
                if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port and conn.pid
            }
        )
    except psutil.Error:
        return []


def port_owner(port: int) -> str:
    """Who listens on TCP ``port``, as a phrase ("another Common Operations run (pid 12, data ...)")."""
    pids = listening_pids(port)
    if not pids:
        return "another process (not visible to this user)"
    return " and ".join(dict.fromkeys(describe_process(pid) for pid in pids))


def describe_process(pid: int) -> str:
    """A process as a phrase, naming the data directory when it belongs to a run of this service."""
    try:
        process = psutil.Process(pid)
        if (data_dir := run_data_dir(process)) is not None:
            return f"another Common Operations run (pid {pid}, data directory {data_dir})"
        parent = process.parent()
        if parent is not None and (data_dir := run_data_dir(parent)) is not None:
            # A server that run started (its dev server): stopping that run frees the port.
            return f"another Common Operations run (pid {parent.pid}, data directory {data_dir})"
        if (data_dir := _dev_server_data_dir(process)) is not None:
            return (
                f"a Temporal dev server (pid {pid}) with its database in {data_dir}, "
                "that no running Common Operations run owns"
            )
        return f"pid {pid} ({process.name()})"
    except psutil.Error:
        return f"pid {pid}"


def _dev_server_data_dir(process: psutil.Process) -> Path | None:
    # A dev server orphaned by a run of another checkout names its data directory in its arguments.
    with contextlib.suppress(psutil.Error, ValueError, IndexError):
        args = process.cmdline()
        if "start-dev" in args and "--db-filename" in args:
            return Path(args[args.index("--db-filename") + 1]).parent
    return None


def _bind_error(host: str, port: int) -> OSError | None:
    host = host or "0.0.0.0"
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        # As the servers themselves bind: a closed connection lingering in TIME_WAIT is not "busy".
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as error:
            return error
    return None
