"""Redis Streams laid out as Dapr's ``pubsub.redis`` component writes them.

One stream per topic, its key the topic name as is; each entry has the field ``data`` (the
CloudEvent JSON with ``topic`` and ``pubsubname`` added, which is what Dapr's envelope stores) and
``metadata`` only when there is some. A Dapr subscriber of the same topic on a ``pubsub.redis``
component (``XGROUP CREATE … MKSTREAM`` + ``XREADGROUP``) therefore reads what this writes, with no
sidecar on the publishing side. Reference: dapr/components-contrib ``pubsub/redis/redis.go``.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from common_operations.infra.events.publisher import Publisher, PublishError


class RedisStreamsPublisher(Publisher):
    """``XADD <topic> [MAXLEN ~ n] * data <envelope>``."""

    def __init__(
        self,
        redis: Redis,
        *,
        pubsub_name: str,
        timeout: float,
        maxlen: int | None = None,
        metadata: dict[str, str] | None = None,
        owns_client: bool = False,
    ) -> None:
        """Write through ``redis``.

        Args:
            redis: the client (closed by :meth:`close` only when ``owns_client``).
            pubsub_name: the Dapr component name subscribers use (``pubsubname`` of the envelope).
            timeout: seconds one XADD may take before it counts as failed.
            maxlen: approximate cap of each stream (``MAXLEN ~``); None keeps everything.
            metadata: Dapr publish metadata stored beside ``data`` (as Dapr stores it).
            owns_client: the client was made for this publisher.
        """
        self._redis = redis
        self._pubsub_name = pubsub_name
        self._timeout = timeout
        self._maxlen = maxlen
        self._metadata = json.dumps(metadata) if metadata else None
        self._owns_client = owns_client

    async def publish(self, topic: str, event: dict[str, Any]) -> None:
        """Append the event to the topic's stream."""
        envelope = {**event, "topic": topic, "pubsubname": self._pubsub_name}
        fields: dict[str, str] = {"data": json.dumps(envelope, separators=(",", ":"))}
        if self._metadata is not None:
            fields["metadata"] = self._metadata
        try:
            async with asyncio.timeout(self._timeout):
                await self._redis.xadd(topic, fields, maxlen=self._maxlen, approximate=True)  # type: ignore[arg-type]
        except (RedisError, OSError, TimeoutError) as err:
            raise PublishError(f"redis XADD to {topic!r} failed: {err!r}") from err

    async def close(self) -> None:
        """Close the client if this publisher made it."""
        if self._owns_client:
            await self._redis.aclose()
