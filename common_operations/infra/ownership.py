"""What one ``common-operations run`` owns in its data directory: a lock, and pid files of its servers.

The lock makes a run the only one using its data directory; the kernel drops it when the run's
process ends however it ends (``kill -9`` included), so a lock is never stale. The pid files let the
next run find servers a crashed run left behind, and tell them apart from unrelated processes that
were given the same pid since.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from pathlib import Path
from types import TracebackType

import psutil

from common_operations.infra.processes import RunRefused, is_alive

LOCK_FILE = "common-operations.lock"


class RunLock:
    """Exclusive use of a data directory by this process (a ``flock`` on :data:`LOCK_FILE`)."""

    def __init__(self, data_dir: Path, fd: int) -> None:
        self.data_dir = data_dir
        self._fd: int | None = fd

    @classmethod
    def acquire(cls, data_dir: Path) -> RunLock:
        """Take the data directory for this run.

        Raises:
            RunRefused: another run holds it.
        """
        data_dir.mkdir(parents=True, exist_ok=True)
        # Python opens files non-inheritable, so the servers we start never hold the lock themselves.
        fd = os.open(data_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise RunRefused(
                f"another `common-operations run` (pid {holder}) is already using the data directory "
                f"{data_dir}; stop it first (Ctrl-C in its terminal, or kill {holder})"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        return cls(data_dir, fd)

    def release(self) -> None:
        """Let another run use the data directory (the file stays: removing it would race a new taker)."""
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> RunLock:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()


def run_data_dir(process: psutil.Process) -> Path | None:
    """The data directory of ``process`` if it is a ``common-operations run`` (it holds the lock open)."""
    with contextlib.suppress(psutil.Error):
        for file in process.open_files():
            path = Path(file.path)
            if path.name == LOCK_FILE:
                return path.parent
    return None


class PidFile:
    """A server's pid and start time, so a later run recognises it (and not a reused pid) after a crash."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def record(self, pid: int) -> None:
        """Remember the process ``pid`` (written atomically: a crash never leaves half a file)."""
        try:
            created = psutil.Process(pid).create_time()
        except psutil.NoSuchProcess:
            return  # already gone: nothing to find later
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps({"pid": pid, "create_time": created}))
        tmp.replace(self.path)

    def running(self) -> psutil.Process | None:
        """The recorded process if it is still running (same pid and the same start time)."""
        try:
            data = json.loads(self.path.read_text())
            process = psutil.Process(int(data["pid"]))
            same = abs(process.create_time() - float(data["create_time"])) < 0.01
        except (OSError, ValueError, KeyError, TypeError, psutil.Error):
            return None
        return process if same and is_alive(process) else None

    def remove(self) -> None:
        """Forget the process (it has been stopped)."""
        self.path.unlink(missing_ok=True)
