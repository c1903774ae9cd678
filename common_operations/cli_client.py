"""The operator CLI's side of the REST API: an HTTP client, the task stream, and how tasks are shown.

Everything here talks to a running service over HTTP (never to its database), so it works from any
machine that reaches the API with a token or an API key. The typer commands are in
:mod:`common_operations.cli_tasks`.

Exit statuses of the commands (``tasks watch`` by the task's outcome):

====  =========================================================================================
0     done (``watch``: the task completed)
1     the service refused the request (a problem answer: its code and detail are printed);
      ``watch``: the task failed
2     usage error, or the service cannot be reached (``watch``: also any refused request)
3     ``watch``: the task was cancelled
====  =========================================================================================
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol, TextIO

import httpx

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_CANCELLED = 3

DEFAULT_URL = "http://127.0.0.1:8000"
TASKS = "/api/v1/operations/tasks"
BULK_ACTIONS = "/api/v1/operations/bulk-actions"
# The statuses a task ends in, and the exit status ``watch`` gives each.
FINAL_EXIT = {"completed": EXIT_OK, "failed": EXIT_FAILED, "cancelled": EXIT_CANCELLED}


class CliError(Exception):
    """A failure the command reports on one line and exits with ``exit_code``."""

    exit_code = EXIT_USAGE


class Unreachable(CliError):
    """The service did not answer (refused connection, DNS, TLS, timeout)."""


class ApiError(CliError):
    """The service answered with a problem (RFC 9457): its status, code and detail."""

    exit_code = EXIT_FAILED

    def __init__(self, status: int, code: str, detail: str) -> None:
        super().__init__(f"{code} ({status}): {detail}")
        self.status = status
        self.code = code
        self.detail = detail


class StreamUnavailable(CliError):
    """The service has no task stream (an older version, or a proxy that refuses it): poll instead."""


@dataclass(frozen=True, slots=True)
class SseEvent:
    """One Server-Sent Events message."""

    event: str
    data: str
    id: str | None = None


def parse_sse(lines: Iterator[str]) -> Iterator[SseEvent]:
    """The messages of an event stream, line by line (comments such as keep-alives are skipped).

    Args:
        lines: the stream's lines without their line endings.
    """
    event, last_id = "message", None
    data: list[str] = []
    for line in lines:
        if not line:
            if data:
                yield SseEvent(event=event, data="\n".join(data), id=last_id)
            event, data = "message", []
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "event":
            event = value
        elif name == "data":
            data.append(value)
        elif name == "id":
            last_id = value
    if data:
        yield SseEvent(event=event, data="\n".join(data), id=last_id)


_RELATIVE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$", re.IGNORECASE)
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_instant(text: str, *, now: datetime | None = None) -> str:
    """An RFC 3339 instant from ``text``: one already (a time zone is required) or an age ago.

    ``30m``, ``2h``, ``7d``, ``1w`` mean that long before now.

    Raises:
        CliError: neither form.
    """
    if match := _RELATIVE.match(text):
        seconds = float(match.group(1)) * _UNITS[match.group(2).lower()]
        when = (now or datetime.now(UTC)) - timedelta(seconds=seconds)
        return when.isoformat().replace("+00:00", "Z")
    try:
        parsed = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise CliError(
            f"{text!r} is not a time: give an RFC 3339 instant or an age such as 30m, 2h, 7d"
        ) from None
    if parsed.tzinfo is None:
        raise CliError(f"{text!r} needs a time zone (e.g. 2026-12-01T00:00:00Z)")
    return parsed.isoformat().replace("+00:00", "Z")


def _problem(resp: httpx.Response) -> ApiError:
    try:
        body = resp.json()
    except ValueError:
        body = None
    if isinstance(body, dict):
        code = str(body.get("code") or body.get("title") or "HTTP_ERROR")
        detail = str(body.get("detail") or body.get("title") or resp.reason_phrase)
    else:
        code, detail = "HTTP_ERROR", resp.text[:200] or resp.reason_phrase
    return ApiError(resp.status_code, code, detail)


class ApiClient:
    """The REST API of a running service, as one caller (a bearer token, an API key, or neither).

    Without credentials a service in ``dev`` auth mode (``make run``) takes the caller for the local
    admin; any other service answers 401.
    """

    def __init__(
        self,
        url: str = DEFAULT_URL,
        *,
        token: str | None = None,
        api_key: str | None = None,
        verify: bool | str = True,
        timeout: float = 30.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        """Connect lazily to ``url`` (scheme, host and port; a path prefix is kept).

        Raises:
            CliError: both a token and an API key (the service refuses that too).
        """
        if token and api_key:
            raise CliError("give --token or --api-key, not both (the service refuses both at once)")
        headers = {"user-agent": "common-operations-cli"}
        if token:
            headers["authorization"] = f"Bearer {token}"
        if api_key:
            headers["x-api-key"] = api_key
        self.url = url.rstrip("/")
        self._http = httpx.Client(
            base_url=self.url, headers=headers, verify=verify, timeout=timeout, transport=transport
        )

    def close(self) -> None:
        """Close the connections."""
        self._http.close()

    def __enter__(self) -> ApiClient:
        """Use as a context manager; closes on exit."""
        return self

    def __exit__(self, *exc: object) -> None:
        """Close the connections."""
        self.close()

    def request(
        self, method: str, path: str, *, params: Mapping[str, Any] | None = None, body: Any = None
    ) -> dict[str, Any]:
        """One JSON request; the decoded answer.

        Raises:
            ApiError: a 4xx/5xx answer.
            Unreachable: no answer.
        """
        query = {k: v for k, v in (params or {}).items() if v is not None}
        try:
            resp = self._http.request(method, path, params=query, json=body)
        except httpx.HTTPError as err:
            raise Unreachable(f"cannot reach {self.url}: {str(err) or type(err).__name__}") from None
        if resp.status_code >= 400:
            raise _problem(resp)
        data = resp.json()
        if not isinstance(data, dict):
            raise ApiError(resp.status_code, "UNEXPECTED_ANSWER", f"not a JSON object: {resp.text[:200]}")
        return data

    def list_tasks(self, **filters: Any) -> dict[str, Any]:
        """ListTasks with the API's query parameters (``taskType``, ``status``, ``page``, …)."""
        return self.request("GET", TASKS, params=filters)

    def get_task(self, task_id: str) -> dict[str, Any]:
        """GetTask: the ``task`` member."""
        task: dict[str, Any] = self.request("GET", f"{TASKS}/{task_id}")["task"]
        return task

    def cancel(self, task_id: str, reason: str | None = None) -> dict[str, Any]:
        """CancelTask; the task once its cleanup ran (or the service's wait ended)."""
        body = {"reason": reason} if reason else None
        task: dict[str, Any] = self.request("POST", f"{TASKS}/{task_id}/cancel", body=body)["task"]
        return task

    def retry(self, task_id: str) -> dict[str, Any]:
        """RetryTask; the task as the new attempt starts."""
        task: dict[str, Any] = self.request("POST", f"{TASKS}/{task_id}/retry")["task"]
        return task

    def logs(self, task_id: str, page: int = 1, page_size: int = 100) -> dict[str, Any]:
        """A page of the task's log lines, oldest first."""
        return self.request("GET", f"{TASKS}/{task_id}/logs", params={"page": page, "pageSize": page_size})

    def bulk_action(self, action: str, filters: Mapping[str, Any], reason: str | None) -> dict[str, Any]:
        """POST a bulk action; its task."""
        body: dict[str, Any] = {"action": action, "filter": {k: v for k, v in filters.items() if v}}
        if reason:
            body["reason"] = reason
        task: dict[str, Any] = self.request("POST", BULK_ACTIONS, body=body)["task"]
        return task

    def stream(self, task_id: str, last_event_id: str | None = None) -> Iterator[SseEvent]:
        """The task's event stream (``task`` snapshots, then ``end``), resumed after ``last_event_id``.

        Raises:
            StreamUnavailable: the service has no stream route (404 without a task problem, 405, 501).
            ApiError: another refusal (the task does not exist: 404 ``TASK_NOT_FOUND``).
            Unreachable: no answer, or the connection broke.
        """
        headers = {"accept": "text/event-stream"}
        if last_event_id:
            headers["last-event-id"] = last_event_id
        # No read timeout: the stream is quiet between changes (keep-alives every 15 s).
        timeout = httpx.Timeout(30.0, read=None)
        try:
            with self._http.stream(
                "GET", f"{TASKS}/{task_id}/stream", headers=headers, timeout=timeout
            ) as resp:
                if resp.status_code >= 400:
                    resp.read()
                    problem = _problem(resp)
                    if resp.status_code in (404, 405, 501) and problem.code != "TASK_NOT_FOUND":
                        raise StreamUnavailable(f"no task stream ({problem})")
                    raise problem
                if not resp.headers.get("content-type", "").startswith("text/event-stream"):
                    raise StreamUnavailable("the answer is not an event stream")
                yield from parse_sse(resp.iter_lines())
        except httpx.HTTPError as err:
            raise Unreachable(f"the stream from {self.url} broke: {str(err) or type(err).__name__}") from None


# --- showing tasks ------------------------------------------------------------------------------


def percent(task: Mapping[str, Any]) -> str:
    """The task's progress, e.g. ``42.5%`` (``-`` while its total is unknown)."""
    if not task.get("totalRecords"):
        return "-"
    return f"{float(task.get('progressPercentage') or 0):.1f}%"


def counts(task: Mapping[str, Any]) -> str:
    """``processed/total`` (``processed`` alone while the total is unknown)."""
    processed, total = task.get("processedRecords") or 0, task.get("totalRecords") or 0
    return f"{processed}/{total}" if total else str(processed)


def short_time(value: str | None) -> str:
    """An API instant as ``YYYY-MM-DD HH:MM:SS`` (UTC), or ``-``."""
    if not value:
        return "-"
    try:
        return (
            datetime.fromisoformat(value.replace("Z", "+00:00")).astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")
        )
    except ValueError:
        return value


def format_duration(seconds: float) -> str:
    """``H:MM:SS``."""
    whole = max(0, round(seconds))
    return f"{whole // 3600}:{whole // 60 % 60:02d}:{whole % 60:02d}"


@dataclass(slots=True)
class RateMeter:
    """Records per second since watching began, and the time left at that rate."""

    clock: Callable[[], float] = time.monotonic
    _first: tuple[float, int] | None = None
    _last: tuple[float, int] | None = field(default=None)

    def add(self, processed: int) -> None:
        """Note the processed count now."""
        now = self.clock()
        if self._first is None or processed < self._first[1]:
            # A retry counts from zero again: measure the new attempt.
            self._first = (now, processed)
        self._last = (now, processed)

    @property
    def rate(self) -> float | None:
        """Records per second, or None before anything moved."""
        if self._first is None or self._last is None:
            return None
        elapsed = self._last[0] - self._first[0]
        moved = self._last[1] - self._first[1]
        return moved / elapsed if elapsed > 0 and moved > 0 else None

    def eta(self, total: int) -> float | None:
        """Seconds until ``total`` at the current rate (None: unknown)."""
        rate = self.rate
        if not rate or not total or self._last is None:
            return None
        return max(0.0, (total - self._last[1]) / rate)


class WatchView(Protocol):
    """How ``watch`` shows each snapshot of the task."""

    def update(self, task: Mapping[str, Any]) -> None:
        """Show the latest snapshot."""

    def close(self, task: Mapping[str, Any]) -> None:
        """Show the final snapshot and release the terminal."""


def progress_line(task: Mapping[str, Any], meter: RateMeter) -> str:
    """One line: status, counts, percentage, ok/failed, rate and ETA."""
    parts = [f"{task.get('status', '?'):<10}", f"{counts(task)} ({percent(task)})"]
    parts.append(f"ok {task.get('successRecords') or 0}")
    parts.append(f"failed {task.get('failedRecords') or 0}")
    if (rate := meter.rate) is not None:
        parts.append(f"{rate:.1f}/s")
    if (
        task.get("status") == "processing"
        and (eta := meter.eta(int(task.get("totalRecords") or 0))) is not None
    ):
        parts.append(f"ETA {format_duration(eta)}")
    return "  ".join(parts)


class PlainView:
    """A line per change (when the output is not a terminal: logs, CI, pipes)."""

    def __init__(self, out: TextIO) -> None:
        """Print to ``out``."""
        self._out = out
        self._meter = RateMeter()
        self._last = ""

    def update(self, task: Mapping[str, Any]) -> None:
        """Print a line if anything shown changed."""
        self._meter.add(int(task.get("processedRecords") or 0))
        line = progress_line(task, self._meter)
        if line != self._last:
            print(line, file=self._out, flush=True)
            self._last = line

    def close(self, task: Mapping[str, Any]) -> None:
        """Print the final line and the error, if any."""
        self.update(task)
        if task.get("errorMessage"):
            print(f"error: {task['errorMessage']}", file=self._out, flush=True)


class JsonView:
    """Each snapshot as one JSON line (``--json``: for scripts)."""

    def __init__(self, out: TextIO) -> None:
        """Print to ``out``."""
        self._out = out

    def update(self, task: Mapping[str, Any]) -> None:
        """Print the snapshot."""
        print(json.dumps(task, separators=(",", ":")), file=self._out, flush=True)

    def close(self, task: Mapping[str, Any]) -> None:
        """Nothing more: the final snapshot was printed as it came."""


class RichView:
    """A live progress bar with counts, rate and ETA (on a terminal)."""

    def __init__(self, task_id: str) -> None:
        """Start the bar (rich renders it on stderr's terminal)."""
        from rich.console import Console
        from rich.progress import BarColumn, Progress, TextColumn

        self._meter = RateMeter()
        self._progress = Progress(
            TextColumn("[bold]{task.fields[status]:<10}"),
            BarColumn(bar_width=None),
            TextColumn("{task.fields[counts]} ({task.fields[pct]})"),
            TextColumn("[green]ok {task.fields[ok]}[/] [red]failed {task.fields[failed]}[/]"),
            TextColumn("{task.fields[rate]}"),
            TextColumn("{task.fields[eta]}"),
            console=Console(stderr=True),
            transient=False,
        )
        self._bar = self._progress.add_task(
            task_id, total=None, status="", counts="", pct="", ok=0, failed=0, rate="", eta=""
        )
        self._progress.start()

    def update(self, task: Mapping[str, Any]) -> None:
        """Move the bar."""
        processed = int(task.get("processedRecords") or 0)
        total = int(task.get("totalRecords") or 0)
        self._meter.add(processed)
        rate = self._meter.rate
        eta = self._meter.eta(total) if task.get("status") == "processing" else None
        self._progress.update(
            self._bar,
            total=total or None,
            completed=processed,
            status=task.get("status", "?"),
            counts=counts(task),
            pct=percent(task),
            ok=task.get("successRecords") or 0,
            failed=task.get("failedRecords") or 0,
            rate=f"{rate:.1f}/s" if rate is not None else "",
            eta=f"ETA {format_duration(eta)}" if eta is not None else "",
        )

    def close(self, task: Mapping[str, Any]) -> None:
        """Draw the final state and stop."""
        self.update(task)
        self._progress.stop()
        if task.get("errorMessage"):
            self._progress.console.print(f"[red]error:[/] {task['errorMessage']}")


def watch(
    client: ApiClient,
    task_id: str,
    view: WatchView,
    *,
    poll: bool = False,
    poll_interval: float = 1.0,
    reconnects: int = 5,
    sleep: Callable[[float], None] = time.sleep,
) -> dict[str, Any]:
    """Show the task until it ends; its final snapshot.

    Follows the task's event stream (resuming with ``Last-Event-ID`` when the connection drops, at
    most ``reconnects`` times in a row), or polls GetTask every ``poll_interval`` seconds when asked
    to or when the service has no stream.

    Raises:
        ApiError: the task cannot be read (missing, hidden, credentials refused).
        Unreachable: the service stopped answering.
    """
    task = client.get_task(task_id)
    view.update(task)
    try:
        if task.get("status") not in FINAL_EXIT and not poll:
            task = _follow_stream(client, task_id, view, reconnects=reconnects, sleep=sleep)
    except StreamUnavailable:
        pass
    while task.get("status") not in FINAL_EXIT:
        sleep(poll_interval)
        task = client.get_task(task_id)
        view.update(task)
    view.close(task)
    return task


def _follow_stream(
    client: ApiClient, task_id: str, view: WatchView, *, reconnects: int, sleep: Callable[[float], None]
) -> dict[str, Any]:
    last_id: str | None = None
    failures = 0
    task: dict[str, Any] = {}
    while True:
        try:
            for event in client.stream(task_id, last_id):
                if event.event not in ("task", "end"):
                    continue
                task = json.loads(event.data)
                last_id = event.id or last_id
                failures = 0
                view.update(task)
                if event.event == "end":
                    return task
        except Unreachable:
            failures += 1
            if failures > reconnects:
                raise
            sleep(min(10.0, 0.5 * 2**failures))
            continue
        # The stream closed without its end (a restarting replica): resume where it stopped.
        failures += 1
        if failures > reconnects:
            raise Unreachable("the task stream keeps closing before the task ends")
        sleep(0.5)
