"""Prometheus figures of the outbox relay (served by the REST API's ``/metrics`` in one process)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

OUTBOX_LAG = Gauge(
    "common_operations_outbox_lag_seconds",
    "Age of the oldest task or outbox event not yet relayed to pub/sub, as of the last sweep.",
)
EVENTS_PUBLISHED = Counter(
    "common_operations_events_published_total",
    "Events the outbox relay handed to the pub/sub backend.",
    ("topic",),
)
PUBLISH_FAILURES = Counter(
    "common_operations_event_publish_failures_total",
    "Publishes the backend refused or did not answer in time (the event is sent again later).",
)
