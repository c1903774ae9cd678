"""Small helpers shared by the tests."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

from common_operations.db.repository import TaskRepository
from common_operations.domain.status import TaskStatus
from common_operations.domain.task import Task
from common_operations.domain.workflow_types import MirrorWrite

T = TypeVar("T")


async def assert_eventually(
    probe: Callable[[], Awaitable[T]],
    predicate: Callable[[T], bool],
    *,
    timeout: float = 15.0,
    interval: float = 0.1,
) -> T:
    """Poll ``probe`` until ``predicate`` holds for its result; fail with the last value."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while True:
        last = await probe()
        if predicate(last):
            return last
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s; last value: {last!r}")
        await asyncio.sleep(interval)


def forced_write(task: Task, *, status: TaskStatus, event: str, message: str, **changes: Any) -> MirrorWrite:
    """A write made outside any run (as the reconciler makes them): the row's state with ``changes``."""
    values: dict[str, Any] = {
        "task_id": str(task.id),
        "seq": task.seq + 1,
        "run_id": task.run_id or "",
        "owner": task.owner_run_id,
        "status": status.value,
        "event_type": event,
        "message": message,
        "total_records": task.counts.total,
        "processed_records": task.counts.processed,
        "success_records": task.counts.success,
        "failed_records": task.counts.failed,
        "progress_percentage": task.progress_percentage,
        "started_at": task.started_at,
        "completed_at": task.completed_at,
        "error_message": task.error_message,
        "output_file_url": task.output_file_url,
        "retry_count": task.retry_count,
        "next_retry_at": task.next_retry_at,
        "at": datetime.now(UTC),
    }
    values.update(changes)
    return MirrorWrite(**values)


async def force_state(
    repository: TaskRepository, task: Task, *, status: TaskStatus | None = None, **changes: Any
) -> bool:
    """Change a task row the way only tests may (e.g. give it an output file), guarded by its seq."""
    write = forced_write(
        task, status=status or task.status, event="task.test", message="changed by a test", **changes
    )
    return await repository.apply_guarded(write, expect_seq=task.seq, new_owner=task.owner_run_id or "test")
