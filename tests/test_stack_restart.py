"""The whole embedded stack (`common-operations run`): Ctrl-C stops everything, a restart loses nothing."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from tests.stack import Stack

pytestmark = pytest.mark.slow

TASKS = "/api/v1/operations/tasks"


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[Stack]:
    s = Stack(tmp_path)
    yield s
    await s.cleanup()  # never leave servers behind, even when the test failed


async def test_restart_with_tasks_in_flight_loses_nothing(stack: Stack) -> None:
    await stack.start()
    async with httpx.AsyncClient(base_url=stack.url, timeout=30) as api:
        r = await api.post(
            TASKS, json={"taskType": "process", "entityType": "product", "requestedBy": "restart"}
        )
        assert r.status_code == 201, r.text
        working = r.json()["task"]["id"]
        r = await api.patch(f"{TASKS}/{working}/progress", json={"totalRecords": 10, "processedRecords": 3})
        assert r.status_code == 200, r.text
        r = await api.post(
            TASKS, json={"taskType": "data_sync", "entityType": "inventory", "requestedBy": "restart"}
        )
        waiting = r.json()["task"]["id"]

    assert await stack.stop() == 0, stack.output()
    assert stack.remaining() == [], "processes left running after Ctrl-C"

    await stack.start()
    async with httpx.AsyncClient(base_url=stack.url, timeout=30) as api:
        task = (await api.get(f"{TASKS}/{working}")).json()["task"]
        assert task["status"] == "processing"
        assert task["processedRecords"] == 3 and task["totalRecords"] == 10
        # The workflow survived the restart: it still accepts reports and finishes the task.
        r = await api.patch(
            f"{TASKS}/{working}/progress",
            json={"processedRecords": 10, "successRecords": 10, "isCompleted": True},
        )
        assert r.status_code == 200, r.text
        assert r.json()["task"]["status"] == "completed"

        assert (await api.get(f"{TASKS}/{waiting}")).json()["task"]["status"] == "pending"
        r = await api.patch(f"{TASKS}/{waiting}/progress", json={"processedRecords": 1})
        assert r.status_code == 200, r.text
        assert r.json()["task"]["status"] == "processing"

        events = (await api.get(f"{TASKS}/{working}/events")).json()["events"]
        assert [e["eventType"] for e in events] == ["task.created", "task.started", "task.completed"]
    assert await stack.stop() == 0, stack.output()
    assert stack.remaining() == []
