"""The publishers against the real thing: Redis Streams and the Dapr sidecar's gRPC contract."""

from __future__ import annotations

import json
import socket
import uuid
from typing import Any

import pytest
from redis.asyncio import Redis

from common_operations.config import EventSettings
from common_operations.infra import cache
from common_operations.infra.events import PublishError, build_publisher
from common_operations.infra.events.dapr import CONTENT_TYPE, DaprPublisher
from common_operations.infra.events.redis_streams import RedisStreamsPublisher
from tests.dapr_sidecar import DaprSidecar


def free_port() -> int:
    """A port nothing listens on (bound once by the OS, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _event(n: int) -> dict[str, Any]:
    return {
        "specversion": "1.0",
        "id": f"evt-{n}",
        "source": "common-operations",
        "type": "operations.task.progress",
        "datacontenttype": "application/json",
        "data": {"n": n},
    }


async def _read_as_dapr_subscriber(redis: Redis, topic: str, group: str) -> list[dict[bytes, bytes]]:
    # What daprd's pubsub.redis subscriber does: a consumer group from the start, then XREADGROUP.
    await redis.xgroup_create(topic, group, id="0", mkstream=True)
    answer = await redis.xreadgroup(group, group, {topic: ">"}, count=100)
    return [fields for _, entries in answer for _, fields in entries]


@pytest.fixture
async def redis(redis_url: str) -> Any:
    client = cache.connect(redis_url)
    yield client
    await client.aclose()


async def test_redis_streams_layout_is_dapr_pubsub_redis(redis: Redis) -> None:
    topic = f"test.events.{uuid.uuid4().hex[:8]}"
    publisher = RedisStreamsPublisher(redis, pubsub_name="pubsub-redis", timeout=5)
    for n in range(3):
        await publisher.publish(topic, _event(n))

    entries = await _read_as_dapr_subscriber(redis, topic, "billing")
    assert [set(fields) for fields in entries] == [{b"data"}] * 3  # no metadata field when none is set
    envelopes = [json.loads(fields[b"data"]) for fields in entries]
    assert [e["id"] for e in envelopes] == ["evt-0", "evt-1", "evt-2"]
    assert all(e["topic"] == topic and e["pubsubname"] == "pubsub-redis" for e in envelopes)
    assert envelopes[2]["data"] == {"n": 2} and envelopes[2]["specversion"] == "1.0"
    await redis.delete(topic)


async def test_redis_streams_metadata_and_maxlen(redis: Redis) -> None:
    topic = f"test.events.{uuid.uuid4().hex[:8]}"
    publisher = RedisStreamsPublisher(
        redis, pubsub_name="p", timeout=5, maxlen=10, metadata={"ttlInSeconds": "60"}
    )
    for n in range(300):
        await publisher.publish(topic, _event(n))
    # MAXLEN ~ trims whole macro nodes: far below 300, at least the 10 asked for.
    assert 10 <= await redis.xlen(topic) < 300
    last = await redis.xrevrange(topic, count=1)
    assert json.loads(last[0][1][b"metadata"]) == {"ttlInSeconds": "60"}
    await redis.delete(topic)


async def test_redis_down_is_a_publish_error() -> None:
    client = cache.connect(f"redis://127.0.0.1:{free_port()}/0")
    publisher = RedisStreamsPublisher(client, pubsub_name="p", timeout=2, owns_client=True)
    with pytest.raises(PublishError):
        await publisher.publish("t", _event(0))
    await publisher.close()


async def test_dapr_publish_event_contract() -> None:
    with DaprSidecar() as sidecar:
        publisher = DaprPublisher(sidecar.endpoint, pubsub_name="orders-pubsub", timeout=5, api_token="t0ken")
        await publisher.publish("operations.task.created", _event(1))
        await publisher.publish("operations.task.completed", _event(2))
        await publisher.close()
        got = sidecar.received()
    assert [(p.pubsub_name, p.topic) for p in got] == [
        ("orders-pubsub", "operations.task.created"),
        ("orders-pubsub", "operations.task.completed"),
    ]
    assert all(p.data_content_type == CONTENT_TYPE for p in got)
    assert json.loads(got[1].data) == _event(2)
    assert got[0].call_metadata["dapr-api-token"] == "t0ken"


async def test_dapr_unavailable_is_a_publish_error() -> None:
    with DaprSidecar() as sidecar:
        publisher = DaprPublisher(sidecar.endpoint, pubsub_name="p", timeout=5)
        sidecar.down = True
        with pytest.raises(PublishError, match="UNAVAILABLE"):
            await publisher.publish("t", _event(0))
        sidecar.down = False
        await publisher.publish("t", _event(1))  # the same channel recovers
        await publisher.close()
        assert [json.loads(p.data)["id"] for p in sidecar.received()] == ["evt-1"]


async def test_dapr_without_sidecar_is_a_publish_error() -> None:
    publisher = DaprPublisher(f"127.0.0.1:{free_port()}", pubsub_name="p", timeout=1)
    with pytest.raises(PublishError):
        await publisher.publish("t", _event(0))
    await publisher.close()


def test_redis_backend_without_redis_fails_at_start() -> None:
    with pytest.raises(ValueError, match="no Redis is configured"):
        build_publisher(EventSettings(backend="redis"), redis_url=None)


async def test_redis_backend_prefers_events_redis_url(redis_url: str) -> None:
    publisher = build_publisher(
        EventSettings(backend="redis", redis_url=redis_url), redis_url="redis://127.0.0.1:1/0"
    )
    topic = f"test.events.{uuid.uuid4().hex[:8]}"
    await publisher.publish(topic, _event(7))
    await publisher.close()
    client = cache.connect(redis_url)
    assert await client.xlen(topic) == 1
    await client.delete(topic)
    await client.aclose()
