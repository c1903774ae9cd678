"""REST with Redis unreachable: GetTask is served from Postgres and readiness stays 200 (degraded)."""

from __future__ import annotations

import pytest

from common_operations.config import Settings
from tests.web.support import Client, create, get


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """The test's settings with a Redis nobody listens to."""
    settings.redis_url = "redis://127.0.0.1:1/0"
    return settings


async def test_get_task_and_readiness_without_redis(api: Client, who: str) -> None:
    task = await create(api, who)
    for _ in range(3):
        assert (await get(api, task["id"]))["id"] == task["id"]
    ready = await api.get("/health/ready")
    assert ready.status_code == 200 and ready.json() == {"status": "degraded"}, ready.text
    detailed = await api.get("/health/detailed")
    assert detailed.status_code == 200, detailed.text
    body = detailed.json()
    assert body["status"] == "degraded"
    assert body["components"]["redis"].startswith("down: ")
    assert body["components"]["database"] == "up"
