"""Health: Postgres and Temporal are required; Redis and the reconciler only degrade the report."""

from __future__ import annotations

from temporalio.client import Client

from common_operations.bootstrap import open_runtime
from common_operations.config import Settings
from common_operations.domain.workflow_types import reconciler_workflow_id
from common_operations.worker import build_worker, ensure_reconciler
from tests.helpers import assert_eventually


async def test_health_reports_every_backing_service(
    settings: Settings, client: Client, redis_url: str
) -> None:
    settings.redis_url = redis_url
    async with open_runtime(settings, client=client) as runtime, build_worker(runtime):
        await ensure_reconciler(runtime)
        await assert_eventually(runtime.workflows.reconciler_status, lambda s: s.passes >= 1)
        report = await runtime.tasks.health()
        await client.get_workflow_handle(reconciler_workflow_id(settings.temporal.task_queue)).terminate()
    assert report.healthy and not report.degraded, report
    assert report.components == {
        "database": "up",
        "temporal": "up",
        "reconciler": "up",
        "stuck_tasks": "up",
        "redis": "up",
    }


async def test_no_reconciler_degrades_but_stays_ready(settings: Settings, client: Client) -> None:
    async with open_runtime(settings, client=client) as runtime:
        report = await runtime.tasks.health()
    assert report.healthy and report.degraded
    assert report.components["reconciler"].startswith("down: ")
    assert "reconciler workflow does not answer" in report.components["reconciler"]


async def test_redis_down_degrades_but_stays_ready(settings: Settings, client: Client) -> None:
    settings.redis_url = "redis://127.0.0.1:1/0"  # nothing listens on port 1
    async with open_runtime(settings, client=client) as runtime:
        report = await runtime.tasks.health()
    assert report.healthy and report.degraded
    assert report.components["redis"].startswith("down: ")
    assert report.components["database"] == "up"


async def test_database_down_is_unhealthy(settings: Settings, client: Client) -> None:
    async with open_runtime(settings, client=client) as runtime:
        await runtime.engine.close_connection_pool()
        await runtime.engine.start_connection_pool(
            dsn="postgresql://postgres@127.0.0.1:1/none", min_size=0, max_size=1
        )
        report = await runtime.tasks.health()
    assert not report.healthy
    assert report.components["database"].startswith("down: ")
    assert report.components["temporal"] == "up"
