"""The server processes ``common-operations run`` starts: spawning, stopping and telling how they ended.

A :class:`Child` is a process this run started; an orphan (a :class:`psutil.Process`) is one a run
that died left behind. Both are stopped the same way: a polite signal, a wait, then harder ones.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

import psutil

# How often a process is checked while waiting for it; short next to every grace period below.
POLL_INTERVAL = 0.1
# SIGKILL cannot be refused; the wait after it only covers the kernel tearing the process down.
KILL_WAIT = 10.0

Escalation = Sequence[tuple[signal.Signals, float]]


class RunRefused(Exception):
    """``run`` will not start here (another run, a busy port, a foreign server); it started nothing."""


class ComponentFailed(Exception):
    """A part of the run failed to start or died while running, so the whole run stops."""


def describe_exit(returncode: int) -> str:
    """``exit code 1`` or ``killed by SIGKILL`` (subprocess reports a signal as a negative code)."""
    if returncode >= 0:
        return f"exit code {returncode}"
    try:
        return f"killed by {signal.Signals(-returncode).name}"
    except ValueError:
        return f"killed by signal {-returncode}"


def log_tail(path: Path, lines: int = 15) -> str:
    """The last ``lines`` lines of a log file, indented for an error message ('' if unreadable)."""
    try:
        text = path.read_text(errors="replace").splitlines()[-lines:]
    except OSError:
        return ""
    return "".join(f"\n    {line}" for line in text)


class Child:
    """A server process this run started, in a session of its own, its output appended to ``log``.

    Its own session keeps a Ctrl-C at the terminal from reaching it: the run stops its children
    itself, in order, after the parts that use them.

    ``subprocess`` rather than asyncio's subprocesses: uvloop's cannot switch to another user
    (Postgres refuses to run as root), and one way of watching every child is simpler than two.
    """

    def __init__(self, name: str, args: Sequence[str], log: Path, *, user: str | None = None) -> None:
        """Start the process.

        Args:
            name: what it is, for messages ("the Temporal dev server").
            args: the command line.
            log: file that receives its stdout and stderr (appended).
            user: system user to run it as (needs root); ``None`` keeps ours.

        Raises:
            OSError: the program could not be started.
        """
        self.name = name
        self.log = log
        with log.open("ab") as out:
            self._popen = subprocess.Popen(
                list(args),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                start_new_session=True,
                user=user,
                # Without these the child would keep root's group and supplementary groups.
                group=None if user is None else _primary_group(user),
                extra_groups=None if user is None else [],
            )

    @property
    def pid(self) -> int:
        """The process id."""
        return self._popen.pid

    @property
    def returncode(self) -> int | None:
        """The exit status once it has ended (reaping it), else ``None``."""
        return self._popen.poll()

    async def wait(self) -> int:
        """Wait until it ends; its exit status."""
        while not await self.ended_within(3600.0):
            pass
        code = self.returncode
        assert code is not None
        return code

    async def ended_within(self, timeout: float) -> bool:
        """Whether it ends within ``timeout`` seconds."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.returncode is None:
            if loop.time() >= deadline:
                return False
            await asyncio.sleep(POLL_INTERVAL)
        return True

    async def stop(self, escalation: Escalation) -> int:
        """Signal it through ``escalation`` ((signal, seconds to wait) in order), then SIGKILL.

        Returns:
            Its exit status.
        """
        await _escalate(self._popen.send_signal, self.ended_within, escalation)
        code = self.returncode
        assert code is not None  # SIGKILL was the last step
        return code


async def stop_orphan(process: psutil.Process, escalation: Escalation) -> None:
    """Stop a process another (dead) run started, as :meth:`Child.stop` does for our own."""

    async def gone(timeout: float) -> bool:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while is_alive(process):
            if loop.time() >= deadline:
                return False
            await asyncio.sleep(POLL_INTERVAL)
        return True

    with contextlib.suppress(psutil.NoSuchProcess):
        await _escalate(process.send_signal, gone, escalation)


def is_alive(process: psutil.Process) -> bool:
    """Still running: not ended, not replaced by a reused pid, not a zombie awaiting its reaper."""
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


async def _escalate(
    send: Callable[[int], None], gone: Callable[[float], Awaitable[bool]], escalation: Escalation
) -> None:
    for sig, grace in [*escalation, (signal.SIGKILL, KILL_WAIT)]:
        if await gone(0):
            return
        with contextlib.suppress(ProcessLookupError):
            send(sig)
        if await gone(grace):
            return


def _primary_group(user: str) -> int:
    import pwd

    return pwd.getpwnam(user).pw_gid
