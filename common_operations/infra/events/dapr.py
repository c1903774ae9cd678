"""The Dapr sidecar's ``PublishEvent`` over gRPC (``dapr.proto.runtime.v1``).

The event is sent as ``application/cloudevents+json``: the sidecar then keeps it as the envelope
(our deterministic ``id``, ``type``, ``source``, ``subject``) and only adds ``topic``,
``pubsubname`` and trace fields, instead of wrapping it in a CloudEvent of its own.
``DaprClient`` is not used: it first blocks on an HTTP health probe of the sidecar (up to a
minute), which a relay retrying on its own schedule does not want.
"""

from __future__ import annotations

import json
from typing import Any, Protocol, cast

import grpc
from dapr.proto.runtime.v1 import dapr_pb2_grpc, pubsub_pb2

from common_operations.infra.events.publisher import Publisher, PublishError

DEFAULT_GRPC_ENDPOINT = "127.0.0.1:50001"
CONTENT_TYPE = "application/cloudevents+json"


class _PublishStub(Protocol):
    async def PublishEvent(  # noqa: N802 - the generated stub's method name
        self,
        request: pubsub_pb2.PublishEventRequest,
        *,
        timeout: float | None = None,
        metadata: tuple[tuple[str, str], ...] | None = None,
    ) -> Any: ...


def _channel(endpoint: str) -> grpc.aio.Channel:
    # DAPR_GRPC_ENDPOINT is written "host:port", "http://host:port" or "https://host:port"
    # (Dapr's SDKs accept all three; https means TLS).
    if endpoint.startswith("https://"):
        return grpc.aio.secure_channel(endpoint.removeprefix("https://"), grpc.ssl_channel_credentials())
    return grpc.aio.insecure_channel(endpoint.removeprefix("http://"))


class DaprPublisher(Publisher):
    """``Dapr/PublishEvent(pubsub_name, topic, data=<CloudEvent JSON>)`` on a grpc.aio channel."""

    def __init__(
        self,
        endpoint: str | None,
        *,
        pubsub_name: str,
        timeout: float,
        api_token: str | None = None,
    ) -> None:
        """Publish to the sidecar at ``endpoint`` (default ``127.0.0.1:50001``).

        Args:
            endpoint: the sidecar's gRPC address (``DAPR_GRPC_ENDPOINT``).
            pubsub_name: the pub/sub component the sidecar publishes through.
            timeout: the deadline of one PublishEvent, seconds.
            api_token: sent as ``dapr-api-token`` when the sidecar requires one.
        """
        self._endpoint = endpoint or DEFAULT_GRPC_ENDPOINT
        self._pubsub_name = pubsub_name
        self._timeout = timeout
        self._metadata = (("dapr-api-token", api_token),) if api_token else None
        # Made on first use: a grpc.aio channel belongs to the event loop it is created in.
        self._chan: grpc.aio.Channel | None = None
        self._stub: _PublishStub | None = None

    def _publish_stub(self) -> _PublishStub:
        if self._stub is None:
            self._chan = _channel(self._endpoint)
            # The generated stub is untyped; _PublishStub states the one method used.
            self._stub = cast(_PublishStub, dapr_pb2_grpc.DaprStub(self._chan))  # type: ignore[no-untyped-call]
        return self._stub

    async def publish(self, topic: str, event: dict[str, Any]) -> None:
        """Hand the event to the sidecar; it answers once its broker took it."""
        request = pubsub_pb2.PublishEventRequest(
            pubsub_name=self._pubsub_name,
            topic=topic,
            data=json.dumps(event, separators=(",", ":")).encode(),
            data_content_type=CONTENT_TYPE,
        )
        try:
            await self._publish_stub().PublishEvent(request, timeout=self._timeout, metadata=self._metadata)
        except grpc.aio.AioRpcError as err:
            detail = f"{err.code().name} {err.details()}"
            raise PublishError(f"dapr PublishEvent to {topic!r} failed: {detail}") from err

    async def close(self) -> None:
        """Close the channel."""
        if self._chan is not None:
            chan, self._chan, self._stub = self._chan, None, None
            await chan.close()
