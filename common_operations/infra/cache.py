"""Redis (optional): the service runs without it and reports it as degraded when it is down."""

from __future__ import annotations

import logging
import time
from typing import Final

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

log = logging.getLogger(__name__)

# A cache answers fast or not at all: a slow Redis must not slow a read or a mirror write.
CACHE_SOCKET_TIMEOUT: Final = 0.5
# Seconds a cache leaves Redis alone after a failed call.
CACHE_RETRY_AFTER: Final = 5.0


def connect(url: str) -> Redis:
    """A lazily connecting client; nothing is sent until first use."""
    return Redis.from_url(url, socket_connect_timeout=2, socket_timeout=2)


def connect_for_caches(url: str) -> Redis:
    """The caches' client: short timeouts and no retries (a miss is cheaper than a wait)."""
    return Redis.from_url(
        url,
        socket_connect_timeout=CACHE_SOCKET_TIMEOUT,
        socket_timeout=CACHE_SOCKET_TIMEOUT,
        retry=Retry(NoBackoff(), 0),
    )


async def ping(client: Redis) -> None:
    """Raise if Redis does not answer."""
    await client.ping()


class RedisOutage:
    """A cache's view of Redis being down: skipped for ``retry_after`` seconds after a failure.

    So an unreachable Redis costs one socket timeout per ``retry_after``, not one per call; the
    outage is logged once, when it begins.
    """

    def __init__(
        self, name: str, retry_after: float = CACHE_RETRY_AFTER, *, fallback: str = "served from Postgres"
    ) -> None:
        """Track the outages seen by the cache called ``name`` (in the log line).

        ``fallback`` says in the log line what serves meanwhile (the rate limiter's in-process
        buckets are not Postgres).
        """
        self._name = name
        self._retry_after = retry_after
        self._fallback = fallback
        self._down_until = 0.0

    @property
    def up(self) -> bool:
        """Whether Redis may be tried now."""
        return time.monotonic() >= self._down_until

    def failed(self, operation: str, err: Exception) -> None:
        """Record a failed call: Redis is skipped for ``retry_after`` seconds from now."""
        now = time.monotonic()
        if now >= self._down_until:
            log.warning(
                "%s: Redis %s failed (%s); skipped for %.0fs, %s",
                self._name,
                operation,
                err,
                self._retry_after,
                self._fallback,
            )
        self._down_until = now + self._retry_after
