"""ListTasks totals: exact up to a limit, the planner's estimate beyond (never below the limit)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest

from common_operations.bootstrap import Runtime
from common_operations.db import repository
from common_operations.domain.status import TaskStatus
from common_operations.domain.task import Task, TaskQuery


async def _insert(runtime: Runtime, requester: str, n: int) -> None:
    for _ in range(n):
        now = datetime.now(UTC)
        task = Task(
            id=uuid.uuid4(), task_type="process", entity_type="product", status=TaskStatus.COMPLETED,
            requested_by=requester, created_at=now, updated_at=now,
        )  # fmt: skip
        await runtime.repository.insert_task(task, "bulk")


async def test_total_is_exact_up_to_the_limit_and_estimated_beyond(
    runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    requester = f"totals-{uuid.uuid4().hex[:8]}"
    await _insert(runtime, requester, 6)
    query = TaskQuery(requested_by=requester, page_size=2)

    page = await runtime.repository.page(query)
    assert page.total == 6 and len(page.items) == 2

    monkeypatch.setattr(repository, "EXACT_TOTAL_LIMIT", 4)
    page = await runtime.repository.page(query)
    # Beyond the limit the total is Postgres' estimate, but never less than what was counted.
    assert page.total >= 5
    assert len(page.items) == 2
