"""``common-operations tasks …`` against a live REST server on the test's runtime, over HTTP.

The app is served by uvicorn on a free 127.0.0.1 port in the test's event loop (the runtime's pool
and Temporal client belong to it). The CLI runs in typer's ``CliRunner`` in a worker thread, so the
loop keeps serving while a command waits (``watch``, ``logs --follow``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import uvicorn
from temporalio.worker import Worker
from typer.testing import CliRunner, Result

from common_operations.bootstrap import Runtime
from common_operations.cli import app
from common_operations.cli_client import parse_instant, parse_sse
from common_operations.domain.principal import Principal
from common_operations.domain.status import TaskStatus
from common_operations.domain.task import CreateTask, ProgressReport, Task
from common_operations.web.app import create_app
from tests.auth_support import token
from tests.helpers import assert_eventually

ADMIN = Principal("cli-test-admin", frozenset({"admin"}))


class _Server(uvicorn.Server):
    """Uvicorn without signal handlers: the test runner owns SIGINT."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        """Leave the process's signal handlers alone."""
        yield


@pytest.fixture
async def url(runtime: Runtime, worker: Worker) -> AsyncIterator[str]:
    """The REST app on a free local port (dev auth mode: no credentials = the local admin)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(create_app(runtime), log_level="warning", access_log=False, lifespan="off")
    server = _Server(config)
    serving = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        while not server.started:
            if serving.done():
                serving.result()
            await asyncio.sleep(0.01)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        # An open event stream would keep the server waiting for it.
        server.force_exit = True
        await serving
        sock.close()


async def cli(*args: str) -> Result:
    """Run the CLI in a thread (the server answers in this loop meanwhile)."""
    runner = CliRunner()
    env: dict[str, str | None] = {"CO_API_URL": None, "CO_TOKEN": None, "CO_API_KEY": None}
    return await asyncio.to_thread(lambda: runner.invoke(app, list(args), env=env))


def _who() -> str:
    return f"cli-{uuid.uuid4().hex[:10]}"


async def _task(runtime: Runtime, who: str, task_type: str = "process") -> Task:
    return await runtime.tasks.create_task(ADMIN, CreateTask(task_type, "product", who))


async def _report(runtime: Runtime, task: Task, **counts: Any) -> None:
    await runtime.tasks.update_progress(ADMIN, task.id, ProgressReport(**counts))


async def test_list_filters_as_json_and_as_a_table(runtime: Runtime, url: str) -> None:
    who = _who()
    first, second = await _task(runtime, who), await _task(runtime, who, "data_sync")
    result = await cli("tasks", "list", "--requested-by", who, "--json", "--url", url)
    assert result.exit_code == 0, result.output
    answer = json.loads(result.stdout)
    assert [t["id"] for t in answer["tasks"]] == [str(second.id), str(first.id)] and answer["total"] == 2

    result = await cli(
        "tasks", "list", "--requested-by", who, "--type", "process", "--since", "1h", "--url", url
    )
    assert result.exit_code == 0, result.output
    assert str(first.id) in result.stdout and str(second.id) not in result.stdout
    assert "pending" in result.stdout and "1 shown of 1 matching" in result.stdout


async def test_show_a_task_and_a_missing_one(runtime: Runtime, url: str) -> None:
    task = await _task(runtime, _who())
    await _report(runtime, task, total_records=10, processed_records=4)
    result = await cli("tasks", "show", str(task.id), "--url", url)
    assert result.exit_code == 0, result.output
    assert "processing" in result.stdout and "4/10 (40.0%)" in result.stdout
    shown = json.loads((await cli("tasks", "show", str(task.id), "--json", "--url", url)).stdout)
    assert shown["id"] == str(task.id) and shown["processedRecords"] == 4

    missing = await cli("tasks", "show", str(uuid.uuid4()), "--url", url)
    assert missing.exit_code == 1 and "TASK_NOT_FOUND (404)" in missing.stderr


async def test_no_service_is_exit_2(url: str) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{sock.getsockname()[1]}"
    result = await cli("tasks", "list", "--url", closed)
    assert result.exit_code == 2 and "cannot reach" in result.stderr
    both = await cli("tasks", "list", "--url", url, "--token", "a", "--api-key", "b")
    assert both.exit_code == 2 and "not both" in both.stderr


async def test_credentials_are_sent(runtime: Runtime, url: str) -> None:
    who = _who()
    mine, theirs = await _task(runtime, who), await _task(runtime, _who())
    user = token(who)
    result = await cli("tasks", "show", str(mine.id), "--json", "--url", url, "--token", user)
    assert result.exit_code == 0 and json.loads(result.stdout)["requestedBy"] == who
    # A plain user does not see another's task: the same 404 as a missing one.
    hidden = await cli("tasks", "show", str(theirs.id), "--url", url, "--token", user)
    assert hidden.exit_code == 1 and "TASK_NOT_FOUND" in hidden.stderr
    refused = await cli("tasks", "list", "--url", url, "--token", "not-a-token")
    assert refused.exit_code == 1 and "UNAUTHENTICATED" in refused.stderr


@pytest.mark.parametrize("poll", [False, True], ids=["stream", "poll"])
async def test_watch_follows_progress_and_exits_0_when_completed(
    runtime: Runtime, url: str, poll: bool
) -> None:
    task = await _task(runtime, _who())
    watching = asyncio.create_task(
        cli("tasks", "watch", str(task.id), "--url", url, *(["--poll"] if poll else []))
    )
    for processed in (2, 5, 8):
        await _report(runtime, task, total_records=10, processed_records=processed, success_records=processed)
        await asyncio.sleep(1.3)
    await _report(
        runtime, task, total_records=10, processed_records=10, success_records=10, is_completed=True
    )
    result = await asyncio.wait_for(watching, 30)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    # The first line is the task as the watch found it (pending, or already moving).
    assert lines[0].split()[0] in ("pending", "processing") and lines[-1].startswith("completed")
    assert any(line.startswith("processing") and "5/10 (50.0%)" in line for line in lines), lines
    assert "10/10 (100.0%)  ok 10  failed 0" in lines[-1]


async def test_watch_exits_1_when_failed_and_3_when_cancelled(runtime: Runtime, url: str) -> None:
    # One CLI run at a time: CliRunner swaps the process's sys.stdout while it runs.
    failing = await _task(runtime, _who())
    watching = asyncio.create_task(cli("tasks", "watch", str(failing.id), "--url", url))
    await asyncio.sleep(1)
    await _report(runtime, failing, error_message="disk full", is_completed=True)
    failed = await asyncio.wait_for(watching, 30)
    assert failed.exit_code == 1, failed.output
    assert failed.stdout.splitlines()[-1] == "error: disk full"

    cancelled = await _task(runtime, _who())
    watching = asyncio.create_task(cli("tasks", "watch", str(cancelled.id), "--json", "--url", url))
    await asyncio.sleep(1)
    await runtime.tasks.cancel_task(ADMIN, cancelled.id, "not needed")
    stopped = await asyncio.wait_for(watching, 30)
    assert stopped.exit_code == 3, stopped.output
    snapshots = [json.loads(line) for line in stopped.stdout.splitlines()]
    assert snapshots[0]["status"] == "pending" and snapshots[-1]["status"] == "cancelled"

    missing = await cli("tasks", "watch", str(uuid.uuid4()), "--url", url)
    assert missing.exit_code == 2 and "TASK_NOT_FOUND" in missing.stderr


async def test_cancel_with_a_reason(runtime: Runtime, url: str) -> None:
    task = await _task(runtime, _who())
    result = await cli("tasks", "cancel", str(task.id), "--reason", "not needed", "--url", url)
    assert result.exit_code == 0 and f"{task.id}  cancelled" in result.stdout
    assert (await runtime.tasks.get_task(ADMIN, task.id)).error_message is None
    logs = await cli("tasks", "logs", str(task.id), "--url", url)
    assert "task cancelled: not needed" in logs.stdout


async def test_cancel_and_retry_refusals_are_exit_1(runtime: Runtime, url: str) -> None:
    task = await _task(runtime, _who())
    await _report(runtime, task, error_message="boom", is_completed=True)
    await assert_eventually(
        lambda: runtime.tasks.get_task(ADMIN, task.id), lambda t: t.status is TaskStatus.FAILED, interval=0.1
    )
    refused = await cli("tasks", "cancel", str(task.id), "--url", url)
    assert (refused.exit_code == 1 and "INVALID_TRANSITION" in refused.stderr) or "409" in refused.stderr
    retried = await cli("tasks", "retry", str(task.id), "--json", "--url", url)
    assert retried.exit_code == 0, retried.output
    assert json.loads(retried.stdout)["retryCount"] == 1


async def test_logs_and_logs_follow_until_the_task_ends(runtime: Runtime, url: str) -> None:
    task = await _task(runtime, _who())
    result = await cli("tasks", "logs", str(task.id), "--url", url)
    assert result.exit_code == 0 and "task created by cli-test-admin" in result.stdout

    following = asyncio.create_task(
        cli("tasks", "logs", str(task.id), "--follow", "--interval", "0.2", "--url", url)
    )
    await asyncio.sleep(0.5)
    await _report(runtime, task, total_records=2, processed_records=1, message="half way")
    await asyncio.sleep(0.5)
    await _report(runtime, task, total_records=2, processed_records=2, is_completed=True, message="all done")
    followed = await asyncio.wait_for(following, 30)
    assert followed.exit_code == 0, followed.output
    out = followed.stdout
    assert out.index("task created by") < out.index("half way") < out.index("all done")
    assert out.count("task created by") == 1


async def test_bulk_cancel_watched_to_the_end(runtime: Runtime, url: str) -> None:
    who = _who()
    tasks = [await _task(runtime, who) for _ in range(5)]
    result = await cli(
        "tasks", "bulk", "cancel", "--type", "process", "--requested-by", who, "--reason", "cli test",
        "--watch", "--url", url,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "bulk cancel started as task" in result.stdout
    assert "completed" in result.stdout.splitlines()[-1] and "5/5 (100.0%)  ok 5  failed 0" in result.stdout
    for task in tasks:
        assert (await runtime.tasks.get_task(ADMIN, task.id)).status is TaskStatus.CANCELLED


async def test_bulk_as_a_plain_user_is_refused(url: str) -> None:
    who = _who()
    result = await cli("tasks", "bulk", "retry", "--requested-by", who, "--url", url, "--token", token(who))
    assert result.exit_code == 1 and "PERMISSION_DENIED (403)" in result.stderr
    unfiltered = await cli("tasks", "bulk", "cancel", "--url", url)
    assert unfiltered.exit_code == 1 and "VALIDATION_FAILED" in unfiltered.stderr


def test_sse_parsing_and_instants() -> None:
    lines = [
        ": keep-alive",
        "",
        "id: 1",
        "event: task",
        'data: {"a":',
        "data: 1}",
        "",
        "id: 2",
        "event: end",
        "data: {}",
        "",
    ]
    events = list(parse_sse(iter(lines)))
    assert [(e.id, e.event, e.data) for e in events] == [("1", "task", '{"a":\n1}'), ("2", "end", "{}")]
    assert parse_instant("2026-01-02T03:04:05+00:00") == "2026-01-02T03:04:05Z"
    with pytest.raises(Exception, match="time zone"):
        parse_instant("2026-01-02T03:04:05")
