"""TaskLimits: per-principal buckets by operation (per task for progress), exemptions, and the
unfinished-task cap counted in Postgres."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from common_operations.bootstrap import Runtime
from common_operations.config import LimitSettings, RateLimit
from common_operations.db.audit_repository import AuditLog
from common_operations.db.messages_repository import MessagesRepository
from common_operations.db.settings_repository import SettingsRepository
from common_operations.domain.errors import QuotaExceeded, RateLimited
from common_operations.domain.principal import Principal
from common_operations.domain.settings_schema import parse_group_schema
from common_operations.domain.status import TaskStatus
from common_operations.domain.task import Task
from common_operations.infra.cache import connect_for_caches
from common_operations.infra.rate_limit import RateLimiter
from common_operations.infra.versioned_cache import VersionedCache
from common_operations.services.audit import AuditService
from common_operations.services.limits import QUOTA_RETRY_AFTER, TaskLimits
from common_operations.services.messages import MessagesService
from common_operations.services.settings import SettingsService

# A token every 2 s: slow enough that no loaded machine refills one between two calls.
SMALL = RateLimit(requests=2, per_seconds=4)


def settings(**changes: object) -> LimitSettings:
    """Small buckets for every operation and no cap unless the test sets one."""
    values: dict[str, object] = {
        "enabled": True,
        "rates": dict.fromkeys(("create", "progress", "read", "change", "admin"), SMALL),
        "max_unfinished_tasks": None,
    }
    values.update(changes)
    return LimitSettings.model_validate(values)


def someone(*roles: str, via: str = "jwt") -> Principal:
    return Principal(f"limits-{uuid.uuid4().hex[:10]}", frozenset(roles), via)


@pytest.fixture
async def limiter(redis_url: str) -> AsyncIterator[RateLimiter]:
    """Buckets in the test Redis under a prefix of this test's own."""
    client = connect_for_caches(redis_url)
    yield RateLimiter(client, prefix=f"co-test:{uuid.uuid4().hex[:8]}:rl:")
    await client.aclose()


class Counter:
    """Unfinished tasks by owner, as the repository would count them."""

    def __init__(self, counts: dict[str, int]) -> None:
        self.counts = counts
        self.asked: list[tuple[str, int | None]] = []

    async def count_unfinished(self, owner: str, *, at_most: int | None = None) -> int:
        self.asked.append((owner, at_most))
        count = self.counts.get(owner, 0)
        return count if at_most is None else min(count, at_most)


async def refused(limits: TaskLimits, principal: Principal, operation: str, scope: str = "") -> RateLimited:
    with pytest.raises(RateLimited) as info:
        await limits.check(principal, operation, scope)
    return info.value


async def test_each_principal_and_operation_has_its_own_bucket(limiter: RateLimiter) -> None:
    limits = TaskLimits(settings(), limiter=limiter)
    alice, bob = someone(), someone()
    await limits.check(alice, "create")
    await limits.check(alice, "create")
    err = await refused(limits, alice, "create")
    assert err.code == "RATE_LIMITED"
    assert 0 < err.retry_after <= 2 and err.retry_after_seconds in {1, 2}
    assert err.details["operation"] == "create" and err.details["limit"] == 2
    assert alice.subject in err.message and "at most 2 per 4 s" in err.message
    # Other operations of alice, and bob's creates, are untouched.
    await limits.check(alice, "read")
    await limits.check(bob, "create")


async def test_a_refused_caller_is_served_again_once_a_token_is_back(limiter: RateLimiter) -> None:
    limits = TaskLimits(settings(), limiter=limiter)
    carol = someone()
    await limits.check(carol, "change")
    await limits.check(carol, "change")
    err = await refused(limits, carol, "change")
    await asyncio.sleep(err.retry_after + 0.05)
    await limits.check(carol, "change")


async def test_progress_is_limited_per_task(limiter: RateLimiter) -> None:
    limits = TaskLimits(settings(), limiter=limiter)
    worker = someone("service")
    one, two = str(uuid.uuid4()), str(uuid.uuid4())
    await limits.check(worker, "progress", one)
    await limits.check(worker, "progress", one)
    err = await refused(limits, worker, "progress", one)
    assert "for this task" in err.message
    # The same worker's reports on another task have a bucket of their own.
    await limits.check(worker, "progress", two)
    await limits.check(worker, "progress", two)


async def test_exempt_roles_internal_jobs_disabled_limits_and_unlisted_operations_pass(
    limiter: RateLimiter,
) -> None:
    limits = TaskLimits(settings(exempt_roles=["admin"]), limiter=limiter)
    admin, job = someone("admin"), someone(via="internal")
    for _ in range(5):
        await limits.check(admin, "create")
        await limits.check(job, "change")
    user = someone()
    for _ in range(5):
        await limits.check(user, "an-operation-without-a-rate")
    off = TaskLimits(settings(enabled=False), limiter=limiter)
    for _ in range(5):
        await off.check(user, "create")
    # TaskLimits() is what services built without limits get: nothing is limited.
    for _ in range(5):
        await TaskLimits().check(user, "create")


async def test_without_redis_the_buckets_are_kept_in_the_process() -> None:
    limits = TaskLimits(settings(), limiter=RateLimiter(connect_for_caches("redis://127.0.0.1:1/0")))
    dave = someone()
    await limits.check(dave, "read")
    await limits.check(dave, "read")
    await refused(limits, dave, "read")


async def test_two_replicas_on_one_redis_share_a_principals_buckets(redis_url: str) -> None:
    prefix = f"co-test:{uuid.uuid4().hex[:8]}:rl:"
    one, two = connect_for_caches(redis_url), connect_for_caches(redis_url)
    try:
        replica_a = TaskLimits(settings(), limiter=RateLimiter(one, prefix=prefix))
        replica_b = TaskLimits(settings(), limiter=RateLimiter(two, prefix=prefix))
        erin = someone()
        await replica_a.check(erin, "create")
        await replica_b.check(erin, "create")
        await refused(replica_a, erin, "create")
        await refused(replica_b, erin, "create")
    finally:
        await one.aclose()
        await two.aclose()


async def test_a_subject_with_colons_cannot_share_another_principals_bucket(limiter: RateLimiter) -> None:
    limits = TaskLimits(settings(), limiter=limiter)
    # Unescaped, "w:t1"'s progress bucket and "w"'s bucket for task "t1" would be one key.
    tricky = Principal("w:t1", frozenset({"service"}), "jwt")
    plain = Principal("w", frozenset({"service"}), "jwt")
    await limits.check(tricky, "progress")
    await limits.check(tricky, "progress")
    await refused(limits, tricky, "progress")
    await limits.check(plain, "progress", "t1")


async def test_the_cap_refuses_an_owner_at_its_limit_with_a_clear_error() -> None:
    counter = Counter({"busy-owner": 3, "calm-owner": 2})
    limits = TaskLimits(settings(max_unfinished_tasks=3), tasks=counter)
    caller = someone("service")
    await limits.check_unfinished(caller, "calm-owner")
    with pytest.raises(QuotaExceeded) as info:
        await limits.check_unfinished(caller, "busy-owner")
    err = info.value
    assert err.code == "QUOTA_EXCEEDED"
    assert "'busy-owner' has 3 unfinished tasks" in err.message
    assert "max_unfinished_tasks = 3" in err.message and "cancel" in err.message
    assert err.details["owner"] == "busy-owner" and err.details["limit"] == 3
    assert err.retry_after == QUOTA_RETRY_AFTER
    # Counted only up to the cap: an owner with a million open tasks costs what one at the cap does.
    assert counter.asked == [("calm-owner", 3), ("busy-owner", 3)]


async def test_the_cap_spares_exempt_roles_internal_jobs_and_disabled_limits() -> None:
    counter = Counter({"owner": 10})
    capped = settings(max_unfinished_tasks=1, exempt_roles=["operator"])
    await TaskLimits(capped, tasks=counter).check_unfinished(someone("operator"), "owner")
    await TaskLimits(capped, tasks=counter).check_unfinished(someone(via="internal"), "owner")
    await TaskLimits(settings(max_unfinished_tasks=None), tasks=counter).check_unfinished(someone(), "owner")
    await TaskLimits(settings(enabled=False, max_unfinished_tasks=1), tasks=counter).check_unfinished(
        someone(), "owner"
    )
    assert counter.asked == []


async def test_the_repository_counts_only_unfinished_tasks(runtime: Runtime, pool: asyncpg.Pool) -> None:
    owner = f"cap-{uuid.uuid4().hex[:10]}"
    now = datetime.now(UTC)

    async def insert(status: TaskStatus, *, retry_pending: bool = False, requested_by: str = owner) -> None:
        task = Task(
            id=uuid.uuid4(), task_type="process", entity_type="product", status=status,
            requested_by=requested_by, created_at=now, updated_at=now,
        )  # fmt: skip
        await runtime.repository.insert_task(task, "inserted by the cap test")
        if retry_pending:
            await pool.execute(
                "UPDATE tasks SET next_retry_at = $2 WHERE id = $1", task.id, now + timedelta(minutes=5)
            )

    for status in (TaskStatus.PENDING, TaskStatus.SCHEDULED, TaskStatus.PROCESSING):
        await insert(status)
    await insert(TaskStatus.FAILED, retry_pending=True)
    # Finished: completed, cancelled, failed without an automatic retry coming.
    await insert(TaskStatus.COMPLETED)
    await insert(TaskStatus.CANCELLED)
    await insert(TaskStatus.FAILED)
    await insert(TaskStatus.PENDING, requested_by=owner + "-other")

    assert await runtime.repository.count_unfinished(owner) == 4
    assert await runtime.repository.count_unfinished(owner, at_most=2) == 2
    assert await runtime.repository.count_unfinished(f"nobody-{uuid.uuid4().hex}") == 0

    limits = TaskLimits(settings(max_unfinished_tasks=4), tasks=runtime.repository)
    with pytest.raises(QuotaExceeded):
        await limits.check_unfinished(someone(), owner)
    await TaskLimits(settings(max_unfinished_tasks=5), tasks=runtime.repository).check_unfinished(
        someone(), owner
    )


async def test_settings_and_messages_writes_and_audit_reads_take_admin_tokens(pool: asyncpg.Pool) -> None:
    limits = TaskLimits(settings(), limiter=RateLimiter(None))
    actor = someone("admin")
    group = f"lim{uuid.uuid4().hex[:10]}"
    schema = parse_group_schema(group, {"fields": {"label": {"type": "string", "default": ""}}})
    cache = VersionedCache(None, "unused:", 60)
    settings_service = SettingsService(SettingsRepository(pool), {group: schema}, cache, limits=limits)
    messages = MessagesService(MessagesRepository(pool), cache, limits=limits)
    audit = AuditService(AuditLog(pool), limits)

    await settings_service.update(actor, group, {"label": "one"})
    await messages.upsert(
        actor,
        f"lim.{uuid.uuid4().hex[:8]}",
        {"category": "c", "defaultLanguage": "en", "translations": {"en": "x"}},
    )
    # Two for the admin operation: the third admin call of any kind is refused.
    with pytest.raises(RateLimited):
        await audit.page(actor, actor=actor.subject)
    with pytest.raises(RateLimited):
        await settings_service.update(actor, group, {"label": "two"})
    assert (await settings_service.get_public(group)).version == 1
