"""Token buckets in a real Redis (one Lua script), shared by limiters, and the in-process fallback."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from common_operations.infra.cache import RedisOutage, connect_for_caches
from common_operations.infra.rate_limit import Bucket, LocalBuckets, RateLimiter

# A token every 2 s: slow enough that no loaded machine refills one between two calls.
SMALL = Bucket(capacity=2, per_seconds=4.0)
UNREACHABLE = "redis://127.0.0.1:1/0"


@pytest.fixture
async def cache_client(redis_url: str) -> AsyncIterator[Redis]:
    """The short-timeout client the service's limiter uses."""
    client = connect_for_caches(redis_url)
    yield client
    await client.aclose()


@pytest.fixture
def prefix() -> str:
    """A key prefix of this test's own, so tests never share buckets."""
    return f"co-test:{uuid.uuid4().hex[:8]}:rl:"


async def test_a_bucket_allows_its_burst_then_refuses_until_refilled(
    cache_client: Redis, prefix: str
) -> None:
    limiter = RateLimiter(cache_client, prefix=prefix)
    first = await limiter.take("alice:create", SMALL)
    second = await limiter.take("alice:create", SMALL)
    third = await limiter.take("alice:create", SMALL)
    assert first.allowed and second.allowed
    assert not third.allowed
    # One token comes back every 2 s: the refusal says so (less the time the calls took).
    assert 0.0 < third.retry_after <= 2.0
    assert limiter.shared

    await asyncio.sleep(third.retry_after + 0.05)
    assert (await limiter.take("alice:create", SMALL)).allowed
    assert not (await limiter.take("alice:create", SMALL)).allowed
    # Another principal's bucket was never touched.
    assert (await limiter.take("bob:create", SMALL)).allowed


async def test_the_bucket_key_expires_once_it_would_be_full_again(
    cache_client: Redis, redis: Redis, prefix: str
) -> None:
    limiter = RateLimiter(cache_client, prefix=prefix)
    slow = Bucket(capacity=10, per_seconds=100.0)  # 0.1 token per second
    await limiter.take("carol:read", slow)
    await limiter.take("carol:read", slow)
    ttl_ms = await redis.pttl(prefix + "carol:read")
    # Two tokens missing at 0.1 per second: full again in 20 s (+1 s of margin), then forgotten.
    assert 19_000 < ttl_ms <= 21_000


async def test_two_limiters_on_one_redis_share_the_bucket(redis_url: str, prefix: str) -> None:
    one, two = connect_for_caches(redis_url), connect_for_caches(redis_url)
    try:
        replica_a = RateLimiter(one, prefix=prefix)
        replica_b = RateLimiter(two, prefix=prefix)
        assert (await replica_a.take("svc:progress:t1", SMALL)).allowed
        assert (await replica_b.take("svc:progress:t1", SMALL)).allowed
        refused = await replica_a.take("svc:progress:t1", SMALL)
        assert not refused.allowed
        assert not (await replica_b.take("svc:progress:t1", SMALL)).allowed
    finally:
        await one.aclose()
        await two.aclose()


async def test_redis_down_falls_back_to_in_process_buckets_and_logs_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    client = connect_for_caches(UNREACHABLE)
    try:
        limiter = RateLimiter(client, outage=RedisOutage("rate limits", fallback="in-process buckets"))
        with caplog.at_level(logging.WARNING, logger="common_operations.infra.cache"):
            decisions = [await limiter.take("dave:create", SMALL) for _ in range(3)]
        # Still limited (never failed, never unlimited), now by this process alone.
        assert [d.allowed for d in decisions] == [True, True, False]
        assert 0.0 < decisions[2].retry_after <= 2.0
        assert not limiter.shared
        warnings = [r for r in caplog.records if "rate limits" in r.getMessage()]
        assert len(warnings) == 1, [r.getMessage() for r in caplog.records]
        assert "in-process buckets" in warnings[0].getMessage()
    finally:
        await client.aclose()


async def test_redis_back_after_the_outage_is_used_again(cache_client: Redis, prefix: str) -> None:
    outage = RedisOutage("rate limits", retry_after=0.2, fallback="in-process buckets")
    limiter = RateLimiter(cache_client, prefix=prefix, outage=outage)
    outage.failed("test", ConnectionError("pretend Redis went away"))
    during = limiter.shared
    await asyncio.sleep(0.25)
    assert not during and limiter.shared
    assert (await limiter.take("erin:change", SMALL)).allowed
    assert await cache_client.exists(prefix + "erin:change") == 1


def test_local_buckets_forget_the_least_recently_used_beyond_their_size() -> None:
    local = LocalBuckets(max_buckets=2)
    one = Bucket(capacity=1, per_seconds=3600.0)
    assert local.take("a", one).allowed
    assert local.take("b", one).allowed
    assert not local.take("a", one).allowed  # "a" is now the most recently used
    assert local.take("c", one).allowed  # "b" is dropped
    assert local.take("b", one).allowed  # a dropped bucket is full again
    assert not local.take("c", one).allowed
