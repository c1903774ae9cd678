"""Fixtures of the REST tests: the app on this test's runtime, with the service's worker running.

The app is driven by ``httpx.AsyncClient`` over ``httpx.ASGITransport``, in the test's own event
loop. Litestar 2's ``AsyncTestClient`` runs the app through an anyio blocking portal, i.e. in
another thread and event loop (litestar-org/litestar#1920): the runtime's asyncpg pool and
Temporal client belong to the test's loop, and the portal call blocks that loop while the app waits
for the worker, so requests would fail or deadlock.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import httpx
import pytest
from temporalio.worker import Worker

from common_operations.bootstrap import Runtime
from common_operations.web.app import create_app


@pytest.fixture
async def api(runtime: Runtime, worker: Worker) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client of the REST app, served in the test's event loop."""
    # Litestar types scope/receive/send as TypedDicts, httpx as plain mappings: same protocol.
    transport = httpx.ASGITransport(app=create_app(runtime))  # type: ignore[arg-type]
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver.local") as client:
        yield client


@pytest.fixture
def who() -> str:
    """A requester unique to this test, so list assertions ignore other tests' tasks in the shared DB."""
    return f"web-{uuid.uuid4().hex[:12]}"
