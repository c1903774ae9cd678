"""Event publishers of the outbox relay: Dapr (sidecar gRPC), Redis Streams, or none."""

from __future__ import annotations

from redis.asyncio import Redis

from common_operations.config import EventSettings
from common_operations.infra import cache
from common_operations.infra.events.publisher import NonePublisher, Publisher, PublishError

__all__ = ["NonePublisher", "PublishError", "Publisher", "build_publisher"]


def build_publisher(events: EventSettings, *, redis_url: str | None, redis: Redis | None = None) -> Publisher:
    """The publisher ``events.backend`` names.

    Args:
        events: the ``events`` section.
        redis_url: the service's Redis, used by the redis backend when ``events.redis_url`` is unset.
        redis: the service's client for ``redis_url`` (reused rather than a second connection pool).

    Raises:
        ValueError: backend ``redis`` without any Redis URL (refused at start, not at first event).
    """
    if events.backend == "dapr":
        from common_operations.infra.events.dapr import DaprPublisher

        return DaprPublisher(
            events.dapr_grpc_endpoint,
            pubsub_name=events.pubsub_name,
            timeout=events.publish_timeout,
            api_token=events.dapr_api_token,
        )
    if events.backend == "redis":
        from common_operations.infra.events.redis_streams import RedisStreamsPublisher

        if events.redis_url:
            client, owned = cache.connect(events.redis_url), True
        elif redis is not None:
            client, owned = redis, False
        elif redis_url:
            client, owned = cache.connect(redis_url), True
        else:
            raise ValueError(
                "events.backend is 'redis' but no Redis is configured: set events.redis_url "
                "(CO_EVENTS__REDIS_URL) or REDIS_URL"
            )
        return RedisStreamsPublisher(
            client,
            pubsub_name=events.pubsub_name,
            timeout=events.publish_timeout,
            maxlen=events.stream_maxlen,
            owns_client=owned,
        )
    return NonePublisher()
