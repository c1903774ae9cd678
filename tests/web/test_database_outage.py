"""An unreachable database is a 503 to retry (REST and gRPC), never a 500."""

from __future__ import annotations

import asyncpg
import pytest

from common_operations.bootstrap import Runtime
from common_operations.domain.principal import Principal
from common_operations.domain.task import CreateTask
from tests.web.support import TASKS, Client, assert_problem


async def _outage(*args: object, **kwargs: object) -> None:
    raise asyncpg.exceptions.ConnectionDoesNotExistError("connection was closed in the middle of operation")


async def test_rest_answers_503_while_postgres_is_unreachable(
    api: Client, runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    task = await runtime.tasks.create_task(Principal("outage"), CreateTask("process", "product", "outage"))
    monkeypatch.setattr(runtime.repository, "get", _outage)
    body = assert_problem(await api.get(f"{TASKS}/{task.id}"), 503, "SERVICE_UNAVAILABLE")
    assert "database is unavailable" in body["detail"]
