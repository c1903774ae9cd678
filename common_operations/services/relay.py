"""The outbox relay: unrelayed task and outbox events to pub/sub, at least once, in order per stream.

A stream is a task (its ``task_events``) or an ``outbox_events`` stream (``settings:payment``).
Only the holder of a stream's lease (``outbox_leases``) publishes it, so events of one stream go
out one at a time and in order while several relays (worker replicas) sweep at once. Each event is
marked relayed right after the broker took it, and a stream stops at its first failure, so event
n+1 is never sent before n. A relay that dies between publishing and marking leaves its lease to
expire; the next holder sends the unmarked events again. Consumers therefore see every event at
least once, first occurrences in order, and drop repeats by the CloudEvents ``id``, which is
deterministic (``{taskId}:{seq}:{eventType}`` for a task event, the row's ``event_id`` otherwise).

Two paths feed it: :meth:`OutboxRelay.notify` right after the mirror applied a transition (fast
path, fire-and-forget) and :meth:`OutboxRelay.run`, the sweeper, for everything else (events
written outside the mirror, a broker that was down, a relay that crashed).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import os
import socket
import time
import uuid
from typing import Any

from common_operations.config import EventSettings
from common_operations.db.outbox_repository import OutboxRepository, PendingEvent, task_stream
from common_operations.db.repository import TaskRepository
from common_operations.domain.task_snapshot import task_snapshot
from common_operations.infra.events.metrics import EVENTS_PUBLISHED, OUTBOX_LAG, PUBLISH_FAILURES
from common_operations.infra.events.publisher import Publisher, PublishError

log = logging.getLogger(__name__)

NOT_PUBLISHED = "none"
# Task event types with a topic of their own; every other ``task.*`` (pending, started, progress,
# the reconciler's annotations) goes to the progress topic.
_OWN_TOPIC = {
    "task.created": "created",
    "task.completed": "completed",
    "task.failed": "failed",
    "task.cancelled": "cancelled",
    "task.retried": "retried",
}
# Streams one sweep takes on, and how many of them it publishes at once.
_STREAMS_PER_SWEEP = 100
_SWEEP_CONCURRENCY = 4
# Fast-path relays in flight per process; beyond that a transition waits for the sweeper.
_MAX_FAST_PATH = 64
# A backend-none sweep marks at most this many batches before yielding to the next interval.
_MAX_MARK_BATCHES = 100


class RelayOutcome(enum.Enum):
    """How relaying one stream ended."""

    DONE = "done"  # nothing left unrelayed (as of the last read)
    BUSY = "busy"  # another relay holds the stream (or this process is already on it)
    FAILED = "failed"  # the broker refused an event; the stream waits for the next sweep


def task_topic_kind(event_type: str) -> str | None:
    """The ``EventTopics`` field a task event is published on; None: it is not published.

    ``webhook.*`` rows (delivery attempts) are history only; unknown prefixes are not published.
    """
    if not event_type.startswith("task."):
        return None
    return _OWN_TOPIC.get(event_type, "progress")


def task_event_id(task_id: str, seq: int, event_type: str) -> str:
    """The deterministic CloudEvents id of a task event (one row per task, seq and type)."""
    return f"{task_id}:{seq}:{event_type}"


def cloud_event(
    stream: str, event: PendingEvent, *, source: str, task: dict[str, Any] | None
) -> dict[str, Any]:
    """The CloudEvents 1.0 (structured JSON) form of a stored event.

    A task event's ``type`` is ``operations.`` + its event type (``operations.task.completed``,
    ``operations.task.started``…); its ``data`` carries the transition as stored with the event
    (status, message and the counts at that moment) and ``task``, the task row when published.
    """
    time_ = event.created_at.isoformat()
    if event.seq is not None:
        return {
            "specversion": "1.0",
            "id": task_event_id(stream, event.seq, event.event_type),
            "source": source,
            "type": f"operations.{event.event_type}",
            "subject": stream,
            "time": time_,
            "datacontenttype": "application/json",
            "data": {
                "taskId": stream,
                "eventType": event.event_type,
                "seq": event.seq,
                "transition": event.data,
                "task": task,
            },
        }
    return {
        "specversion": "1.0",
        "id": event.event_id,
        "source": source,
        "type": event.event_type,
        "subject": event.subject,
        "time": time_,
        "datacontenttype": "application/json",
        "data": event.data,
    }


def _holder_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class OutboxRelay:
    """Publishes unrelayed events of streams it leases; one per worker process."""

    def __init__(
        self,
        outbox: OutboxRepository,
        tasks: TaskRepository,
        publisher: Publisher,
        events: EventSettings,
        *,
        holder: str | None = None,
    ) -> None:
        """Relay through ``publisher`` as ``events`` configures (topics, lease, batch size).

        Args:
            outbox: the relay's SQL.
            tasks: where the task snapshot of a task event is read.
            publisher: the backend (closed by :meth:`close`).
            events: the ``events`` settings.
            holder: this relay's lease holder name (unique per relay; generated when omitted).
        """
        self._outbox = outbox
        self._tasks = tasks
        self._publisher = publisher
        self._events = events
        self.holder = holder or _holder_id()
        # Streams this process is relaying, so the fast path and the sweeper (same holder, so the
        # lease would let both in) never publish one stream at once; a stream asked for while
        # busy is gone over again by the relay already on it.
        self._active: set[str] = set()
        self._again: set[str] = set()
        self._fast: set[asyncio.Task[None]] = set()

    @property
    def publisher(self) -> Publisher:
        """The backend."""
        return self._publisher

    def _topic(self, event: PendingEvent) -> str | None:
        kind = task_topic_kind(event.event_type) if event.is_task_event else event.topic_kind
        topic = getattr(self._events.topics, kind, None) if kind else None
        return topic if isinstance(topic, str) and topic != NOT_PUBLISHED else None

    def notify(self, stream: str) -> None:
        """Relay ``stream`` soon, in the background (the fast path after a transition).

        Never blocks and never raises: with no backend, too many relays in flight or any failure,
        the sweeper relays the stream instead.
        """
        if not self._publisher.sends or len(self._fast) >= _MAX_FAST_PATH:
            return
        task = asyncio.create_task(self._fast_path(stream), name=f"relay-{stream}")
        self._fast.add(task)
        task.add_done_callback(self._fast.discard)

    async def _fast_path(self, stream: str) -> None:
        try:
            await self.relay_stream(stream)
        except Exception as err:  # the sweeper retries whatever went wrong
            log.debug("fast-path relay of %s failed (the sweeper retries): %r", stream, err)

    async def relay_stream(self, stream: str) -> RelayOutcome:
        """Publish the unrelayed events of ``stream`` in order, if its lease can be had.

        Raises:
            Exception: a database error (the stream's lease is released or expires).
        """
        if stream in self._active:
            self._again.add(stream)
            return RelayOutcome.BUSY
        self._active.add(stream)
        try:
            while True:
                self._again.discard(stream)
                outcome = await self._relay_leased(stream)
                if outcome is not RelayOutcome.DONE or stream not in self._again:
                    return outcome
        finally:
            self._active.discard(stream)
            self._again.discard(stream)

    async def _relay_leased(self, stream: str) -> RelayOutcome:
        lease = self._events.lease_seconds
        if not await self._outbox.take_lease(stream, self.holder, lease):
            return RelayOutcome.BUSY
        renewed = time.monotonic()
        try:
            while True:
                batch = await self._outbox.pending(stream, self._events.batch_size)
                task = await self._snapshot(stream, batch)
                for event in batch:
                    # Renewed well before expiry; a lease lost meanwhile (this relay stalled
                    # longer than the lease) means another relay resumes the stream: stop.
                    if time.monotonic() - renewed > lease / 3:
                        if not await self._outbox.take_lease(stream, self.holder, lease):
                            return RelayOutcome.BUSY
                        renewed = time.monotonic()
                    topic = self._topic(event)
                    if topic is not None:
                        body = cloud_event(stream, event, source=self._events.source, task=task)
                        try:
                            await self._publisher.publish(topic, body)
                        except PublishError as err:
                            PUBLISH_FAILURES.inc()
                            log.warning("event %s not published, retried later: %s", body["id"], err)
                            return RelayOutcome.FAILED
                        EVENTS_PUBLISHED.labels(topic).inc()
                    await self._outbox.mark_relayed(event)
                if len(batch) < self._events.batch_size:
                    return RelayOutcome.DONE
        finally:
            # Best effort (also when cancelled): a lease left behind only delays the stream
            # until it expires.
            with contextlib.suppress(Exception):
                await self._outbox.release(stream, self.holder)

    async def _snapshot(self, stream: str, batch: list[PendingEvent]) -> dict[str, Any] | None:
        # The task as it is now, read once per batch; each event's own counts are in its transition.
        task_id = task_stream(stream)
        if task_id is None or not any(e.is_task_event and self._topic(e) for e in batch):
            return None
        task = await self._tasks.get(task_id)
        return task_snapshot(task) if task is not None else None

    async def sweep_once(self) -> bool:
        """Relay what is unrelayed now (or, with no backend, mark it relayed unsent).

        Returns:
            Whether more is probably waiting (a full sweep with no broker failure): sweep again
            at once rather than after the interval.

        Raises:
            Exception: a database error.
        """
        if not self._publisher.sends:
            # Nothing is sent, so order does not matter: batches of plain UPDATEs.
            for _ in range(_MAX_MARK_BATCHES):
                if await self._outbox.mark_batch_relayed(self._events.batch_size) == 0:
                    break
            OUTBOX_LAG.set(0)
            return False
        streams = await self._outbox.candidate_streams(self.holder, _STREAMS_PER_SWEEP)
        gate = asyncio.Semaphore(_SWEEP_CONCURRENCY)
        broker_down = asyncio.Event()

        async def relay(stream: str) -> None:
            async with gate:
                # One failure is enough to know the broker is down: the other streams wait for
                # the next sweep instead of each spending a publish timeout.
                if not broker_down.is_set() and await self.relay_stream(stream) is RelayOutcome.FAILED:
                    broker_down.set()

        await asyncio.gather(*(relay(stream) for stream in streams))
        OUTBOX_LAG.set(await self._outbox.lag_seconds())
        return len(streams) == _STREAMS_PER_SWEEP and not broker_down.is_set()

    async def run(self) -> None:
        """Sweep every ``events.sweep_interval`` seconds until cancelled; errors are logged."""
        while True:
            more = False
            try:
                more = await self.sweep_once()
            except asyncio.CancelledError:
                raise
            except Exception as err:  # a database outage must not end the sweeper
                log.warning("outbox sweep failed, retrying in %.1fs: %r", self._events.sweep_interval, err)
            if not more:
                await asyncio.sleep(self._events.sweep_interval)

    async def close(self) -> None:
        """Stop fast-path relays in flight (the sweeper resumes them) and close the publisher."""
        for task in list(self._fast):
            task.cancel()
        await asyncio.gather(*self._fast, return_exceptions=True)
        await self._publisher.close()
