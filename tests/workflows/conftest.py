"""The time-skipping runtime of the workflow tests (long timers in no time).

The test server cannot register custom search attributes, so these runtimes run with
``temporal.search_attributes`` off; everything else is the production path.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from temporalio.testing import WorkflowEnvironment

from common_operations.bootstrap import Runtime, open_runtime
from common_operations.worker import build_worker
from tests.conftest import make_settings


@pytest.fixture
async def ts_runtime(
    database_url: str, time_skipping_env: WorkflowEnvironment, task_queue: str, delegate_queue: str
) -> AsyncIterator[Runtime]:
    """A runtime and the service's worker on the time-skipping server (2-hour task timeout)."""
    settings = make_settings(
        database_url,
        time_skipping_env.client.service_client.config.target_host,
        task_queue,
        delegate_queue,
        search_attributes=False,
        task_timeout=7200,
    )
    settings.operations.task_types["process"].heartbeat_timeout = 600
    async with open_runtime(settings, client=time_skipping_env.client) as runtime, build_worker(runtime):
        yield runtime
