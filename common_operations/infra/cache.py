"""Redis (optional): the service runs without it and reports it as degraded when it is down."""

from __future__ import annotations

from redis.asyncio import Redis


def connect(url: str) -> Redis:
    """A lazily connecting client; nothing is sent until first use."""
    return Redis.from_url(url, socket_connect_timeout=2, socket_timeout=2)


async def ping(client: Redis) -> None:
    """Raise if Redis does not answer."""
    await client.ping()
