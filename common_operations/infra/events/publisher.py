"""What the outbox relay publishes through: a topic and a CloudEvent, delivered or raised."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any


class PublishError(Exception):
    """The broker did not take the event (down, refused, too slow); it may be sent again."""


class Publisher(ABC):
    """A pub/sub backend. ``publish`` returns only once the broker has taken the event."""

    #: False for a backend that sends nothing: the relay then marks events relayed in bulk.
    sends: bool = True

    @abstractmethod
    async def publish(self, topic: str, event: dict[str, Any]) -> None:
        """Send one CloudEvent (a JSON-ready dict) to ``topic``.

        Raises:
            PublishError: the event was not taken; the caller keeps it and tries again later.
        """

    async def close(self) -> None:  # noqa: B027 - optional hook, most backends hold nothing
        """Release connections (idempotent)."""


class NonePublisher(Publisher):
    """Events are not published (``events.backend: none``)."""

    sends = False

    async def publish(self, topic: str, event: dict[str, Any]) -> None:
        """Drop the event."""
