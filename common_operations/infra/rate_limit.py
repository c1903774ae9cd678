"""Token buckets in Redis, shared by every replica, with an in-process fallback while Redis is down.

One Lua script refills and takes a token atomically on Redis' own clock (``TIME``), so replicas
with skewed clocks still share one bucket exactly; a bucket's key expires once it would be full
again, so idle principals cost no memory. When Redis fails or is unreachable the limiter uses a
bucket of the same size in this process (each replica then enforces the limit on its own share of
the traffic: looser, never absent) and leaves Redis alone for a few seconds (:class:`RedisOutage`),
so an outage costs one short socket timeout per few seconds, never a failed request.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Final

from redis.asyncio import Redis
from redis.exceptions import RedisError

from common_operations.infra.cache import RedisOutage

KEY_PREFIX: Final = "co:rl:"
# In-process buckets kept at most (least recently used dropped first): a dropped bucket is full
# again, which only forgives a principal that has been quiet longer than every other one.
LOCAL_MAX_BUCKETS: Final = 100_000

# KEYS[1]: the bucket; ARGV: capacity, refill rate (tokens per second), cost.
# Returns {allowed (1/0), seconds until `cost` tokens are back (text: Lua numbers become integers)}.
_TAKE = """
local capacity = tonumber(ARGV[1])
local rate = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
local state = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(state[1])
local ts = tonumber(state[2])
if tokens == nil or ts == nil then
  tokens = capacity
  ts = now
end
if now > ts then
  tokens = math.min(capacity, tokens + (now - ts) * rate)
end
local allowed = 0
local wait = 0
if tokens >= cost then
  tokens = tokens - cost
  allowed = 1
else
  wait = (cost - tokens) / rate
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.ceil((capacity - tokens) / rate * 1000) + 1000)
return {allowed, tostring(wait)}
"""


@dataclass(frozen=True, slots=True)
class Bucket:
    """A token bucket's shape: ``capacity`` tokens at most, refilled at ``capacity / per_seconds``."""

    capacity: int
    per_seconds: float

    @property
    def rate(self) -> float:
        """Tokens added per second."""
        return self.capacity / self.per_seconds


@dataclass(frozen=True, slots=True)
class Decision:
    """Whether a token was taken, and if not, in how many seconds one is back."""

    allowed: bool
    retry_after: float = 0.0


class LocalBuckets:
    """Token buckets in this process (the fallback, and the only limiter without Redis)."""

    def __init__(self, max_buckets: int = LOCAL_MAX_BUCKETS) -> None:
        """Keep at most ``max_buckets`` buckets (least recently used dropped first)."""
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()
        self._max = max_buckets

    def take(self, key: str, bucket: Bucket, cost: int = 1) -> Decision:
        """Refill ``key``'s bucket for the time passed and take ``cost`` tokens if it has them."""
        now = time.monotonic()
        tokens, last = self._buckets.pop(key, (float(bucket.capacity), now))
        tokens = min(float(bucket.capacity), tokens + max(0.0, now - last) * bucket.rate)
        if tokens >= cost:
            decision = Decision(True)
            tokens -= cost
        else:
            decision = Decision(False, (cost - tokens) / bucket.rate)
        self._buckets[key] = (tokens, now)
        while len(self._buckets) > self._max:
            self._buckets.popitem(last=False)
        return decision


class RateLimiter:
    """Takes tokens from buckets in Redis (shared), or in this process while Redis cannot answer."""

    def __init__(
        self,
        redis: Redis | None,
        *,
        prefix: str = KEY_PREFIX,
        outage: RedisOutage | None = None,
        local: LocalBuckets | None = None,
    ) -> None:
        """Use ``redis`` (a short-timeout client: ``infra.cache.connect_for_caches``) if given.

        Args:
            redis: where the shared buckets live; None: in-process buckets only.
            prefix: the buckets' key prefix.
            outage: how long Redis is left alone after a failure (default: the caches' rule).
            local: the in-process buckets (tests pass their own to inspect them).
        """
        self._redis = redis
        self._prefix = prefix
        self._outage = outage or RedisOutage("rate limits", fallback="in-process buckets meanwhile")
        self._local = local or LocalBuckets()
        self._script = redis.register_script(_TAKE) if redis is not None else None

    @property
    def shared(self) -> bool:
        """Whether buckets are shared through Redis right now (False while it is down)."""
        return self._script is not None and self._outage.up

    async def take(self, key: str, bucket: Bucket, cost: int = 1) -> Decision:
        """Take ``cost`` tokens of ``key``'s bucket; never raises because Redis failed.

        Args:
            key: the bucket's name (the principal, operation and scope; the prefix is added).
            bucket: its capacity and refill period.
            cost: tokens to take (at most the capacity, or it is never allowed).
        """
        if self._script is not None and self._outage.up:
            try:
                allowed, wait = await self._script(
                    keys=[self._prefix + key], args=[bucket.capacity, repr(bucket.rate), cost]
                )
            except (TimeoutError, RedisError, OSError) as err:
                self._outage.failed("token bucket", err)
            else:
                retry_after = float(wait)
                return Decision(bool(int(allowed)), retry_after if math.isfinite(retry_after) else 1.0)
        return self._local.take(key, bucket, cost)
