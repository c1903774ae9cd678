"""Rate limits and the unfinished-task cap through REST: 429 problems with Retry-After, recovery,
progress buckets per task, and Redis being down changing nothing for the caller."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import httpx
import pytest

from common_operations.bootstrap import Runtime
from common_operations.config import LimitSettings, RateLimit
from common_operations.infra.cache import connect_for_caches
from common_operations.infra.rate_limit import RateLimiter
from common_operations.services.limits import TaskLimits
from tests.auth_support import bearer
from tests.web.support import TASKS, assert_problem

GENEROUS = RateLimit(requests=1000, per_seconds=60)
# Small buckets refilled slowly enough that a loaded machine cannot refill one between two calls
# (a token every 2 s, or every 30 s where no test waits for the refill).
TWO_PER_4S = RateLimit(requests=2, per_seconds=4)
TWO_PER_MINUTE = RateLimit(requests=2, per_seconds=60)
UNREACHABLE = "redis://127.0.0.1:1/0"

Install = Callable[..., TaskLimits]


@pytest.fixture
async def install_limits(runtime: Runtime, redis_url: str) -> AsyncIterator[Install]:
    """Enable limits on the test runtime's task service (the session's settings have them off)."""
    previous = runtime.tasks.limits
    clients = []

    def install(redis: str | None = redis_url, **overrides: Any) -> TaskLimits:
        rates = dict.fromkeys(("create", "progress", "read", "change", "admin"), GENEROUS)
        rates.update(overrides.pop("rates", {}))
        values: dict[str, Any] = {"enabled": True, "rates": rates, "max_unfinished_tasks": None}
        values.update(overrides)
        client = connect_for_caches(redis) if redis else None
        if client is not None:
            clients.append(client)
        limits = TaskLimits(
            LimitSettings.model_validate(values),
            limiter=RateLimiter(client, prefix=f"co-test:{uuid.uuid4().hex[:8]}:rl:"),
            tasks=runtime.repository,
        )
        runtime.tasks.limits = limits
        return limits

    yield install
    runtime.tasks.limits = previous
    for client in clients:
        await client.aclose()


@pytest.fixture
def user() -> Iterator[dict[str, str]]:
    """A plain user of this test's own (creates and manages its own tasks)."""
    yield bearer(f"limits-user-{uuid.uuid4().hex[:10]}")


async def create(api: httpx.AsyncClient, headers: dict[str, str], **body: Any) -> httpx.Response:
    return await api.post(
        TASKS, json={"taskType": "process", "entityType": "product", **body}, headers=headers
    )


async def created_id(api: httpx.AsyncClient, headers: dict[str, str]) -> str:
    resp = await create(api, headers)
    assert resp.status_code == 201, resp.text
    task_id: str = resp.json()["task"]["id"]
    return task_id


async def test_over_the_limit_is_429_with_retry_after_then_served_again(
    api: httpx.AsyncClient, install_limits: Install, user: dict[str, str]
) -> None:
    install_limits(rates={"read": TWO_PER_4S})
    task_id = await created_id(api, user)
    for _ in range(2):
        assert (await api.get(f"{TASKS}/{task_id}", headers=user)).status_code == 200
    resp = await api.get(f"{TASKS}/{task_id}", headers=user)
    body = assert_problem(resp, 429, "RATE_LIMITED")
    retry_after = float(body["details"]["retry_after"])
    assert 0 < retry_after <= 2 and resp.headers["Retry-After"] in {"1", "2"}
    assert "at most 2 per 4 s" in body["detail"]
    assert body["details"]["operation"] == "read"
    # Listing is a read too; another caller's reads are not affected.
    assert_problem(await api.get(TASKS, headers=user), 429, "RATE_LIMITED")
    assert (await api.get(TASKS, headers=bearer(f"other-{uuid.uuid4().hex[:8]}"))).status_code == 200

    await asyncio.sleep(retry_after + 0.05)
    assert (await api.get(f"{TASKS}/{task_id}", headers=user)).status_code == 200


async def test_progress_reports_are_limited_per_task(api: httpx.AsyncClient, install_limits: Install) -> None:
    install_limits(rates={"progress": TWO_PER_MINUTE})
    worker = bearer(f"limits-worker-{uuid.uuid4().hex[:8]}", ["service"])
    first, second = await created_id(api, worker), await created_id(api, worker)

    async def report(task_id: str, processed: int) -> httpx.Response:
        return await api.patch(
            f"{TASKS}/{task_id}/progress",
            json={"totalRecords": 10, "processedRecords": processed},
            headers=worker,
        )

    assert (await report(first, 1)).status_code == 200
    assert (await report(first, 2)).status_code == 200
    refused = await report(first, 9)
    assert_problem(refused, 429, "RATE_LIMITED")
    assert 0 < int(refused.headers["Retry-After"]) <= 30
    # The other task's reports have their own bucket; the refused report changed nothing.
    assert (await report(second, 1)).status_code == 200
    assert (await report(second, 2)).status_code == 200
    task = (await api.get(f"{TASKS}/{first}", headers=worker)).json()["task"]
    assert task["processedRecords"] == 2


async def test_the_unfinished_cap_is_a_clear_429_and_a_cancel_frees_a_slot(
    api: httpx.AsyncClient, install_limits: Install, user: dict[str, str]
) -> None:
    install_limits(max_unfinished_tasks=2)
    first = await created_id(api, user)
    await created_id(api, user)
    resp = await create(api, user)
    body = assert_problem(resp, 429, "QUOTA_EXCEEDED")
    assert "has 2 unfinished tasks" in body["detail"] and "max_unfinished_tasks = 2" in body["detail"]
    assert "cancel" in body["detail"]
    assert body["details"]["limit"] == 2 and body["details"]["unfinished"] == 2
    assert int(resp.headers["Retry-After"]) > 0

    cancelled = await api.post(f"{TASKS}/{first}/cancel", json={"reason": "make room"}, headers=user)
    assert cancelled.status_code == 200, cancelled.text
    assert cancelled.json()["task"]["status"] == "cancelled"
    assert (await create(api, user)).status_code == 201


async def test_with_redis_down_requests_succeed_and_are_still_limited(
    api: httpx.AsyncClient, install_limits: Install, user: dict[str, str]
) -> None:
    install_limits(redis=UNREACHABLE, rates={"create": TWO_PER_MINUTE})
    assert (await create(api, user)).status_code == 201
    assert (await create(api, user)).status_code == 201
    resp = await create(api, user)
    assert_problem(resp, 429, "RATE_LIMITED")
    assert 0 < int(resp.headers["Retry-After"]) <= 30
