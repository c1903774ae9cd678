"""Task counters and histograms, and the functions the service layer and the mirror call.

The callers pass plain values (a task type, an error code, a mirror row); the label rules (bounded
``task_type``, which writes count as a finish) live here once. See the package docstring for which
process exports which metric.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any, Final

from prometheus_client import Counter, Gauge, Histogram

from common_operations.domain.status import ACTIVE_STATUSES, TaskStatus
from common_operations.domain.workflow_types import MirrorWrite
from common_operations.infra.metrics import type_label

# The outcomes of a finished task (the statuses a run ends a task with).
OUTCOMES: Final = (TaskStatus.COMPLETED.value, TaskStatus.FAILED.value, TaskStatus.CANCELLED.value)
# The event types of a run's final writes (a progress write never ends a task).
_FINAL_EVENTS: Final = frozenset(f"task.{outcome}" for outcome in OUTCOMES)
RETRIED_EVENT: Final = "task.retried"
# The statuses co_tasks_in_flight reports (a failed task is closed unless it waits for a retry).
IN_FLIGHT_STATUSES: Final = tuple(sorted(s.value for s in ACTIVE_STATUSES))

# Tasks run from seconds (a small import) to hours (a migration).
_DURATION_BUCKETS: Final = (1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200, 21600, 86400)
# Waiting for a worker: milliseconds when the queue is idle, minutes when it is backed up.
_WAIT_BUCKETS: Final = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600)
# One SQL statement on the mirror.
_WRITE_BUCKETS: Final = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)

TASKS_CREATED = Counter(
    "co_tasks_created",
    "Tasks created through the API (an idempotent replay of a create is not counted).",
    ("task_type",),
)
TASKS_CANCELLED = Counter(
    "co_tasks_cancelled",
    "Cancellations asked for through the API and carried out (every cancellation, the temporal CLI's "
    'included, ends in co_tasks_finished_total{outcome="cancelled"}).',
    ("task_type",),
)
TASKS_RETRIED = Counter(
    "co_tasks_retried",
    "Retries begun (by hand or automatically), counted where the retry's mirror write is applied.",
    ("task_type",),
)
TASKS_FINISHED = Counter(
    "co_tasks_finished",
    "Task attempts ended, by outcome (completed, failed, cancelled), counted where the final write "
    "is applied.",
    ("task_type", "outcome"),
)
TASK_DURATION = Histogram(
    "co_task_duration_seconds",
    "Time from a task's creation to its final state, by outcome.",
    ("task_type", "outcome"),
    buckets=_DURATION_BUCKETS,
)
QUEUE_WAIT = Histogram(
    "co_task_queue_wait_seconds",
    "Time from a task's creation (or its scheduled time, when later) to its first start.",
    ("task_type",),
    buckets=_WAIT_BUCKETS,
)
RECORDS_PROCESSED = Counter(
    "co_records_processed",
    "Records processed by tasks, as their mirrored counts grow (each attempt counts its own).",
    ("task_type",),
)
PROGRESS_REPORTS = Counter(
    "co_progress_reports",
    "Progress reports answered by the API: outcome accepted or rejected, code the error code "
    "(OK when accepted).",
    ("task_type", "outcome", "code"),
)
MIRROR_WRITE = Histogram(
    "co_mirror_write_seconds",
    "Latency of one mirror write (the state change, its event and log lines in one statement), by "
    "outcome: applied, or skipped (a replay or a fenced-out writer).",
    ("outcome",),
    buckets=_WRITE_BUCKETS,
)
TASKS_IN_FLIGHT = Gauge(
    "co_tasks_in_flight",
    "Tasks scheduled, pending or processing, from the mirror (a global figure: every replica reports "
    "the same value, take max() across them).",
    ("task_type", "status"),
)
TASKS_STUCK = Gauge(
    "co_tasks_stuck",
    "Running tasks whose workflow task keeps failing, as of the reconciler's last pass (global: "
    "take max() across replicas).",
)
GAUGES_REFRESHED = Gauge(
    "co_gauges_refreshed_timestamp_seconds",
    "When this process last refreshed the global gauges from the mirror (Unix time).",
)


def task_created(task_type: str) -> None:
    """Count a task the API created."""
    TASKS_CREATED.labels(type_label(task_type)).inc()


def task_cancelled(task_type: str) -> None:
    """Count a cancellation the API carried out."""
    TASKS_CANCELLED.labels(type_label(task_type)).inc()


def report_accepted(task_type: str) -> None:
    """Count a progress report the task's workflow applied."""
    PROGRESS_REPORTS.labels(type_label(task_type), "accepted", "OK").inc()


def report_rejected(task_type: str | None, code: str) -> None:
    """Count a refused progress report under its error code (``task_type`` None: not read yet)."""
    PROGRESS_REPORTS.labels(type_label(task_type), "rejected", code).inc()


def mirror_written(write: MirrorWrite, row: Mapping[str, Any], seconds: float) -> None:
    """Count what an applied mirror write changed, and time the write.

    ``row`` is the mirror statement's answer: ``applied`` and the row as it was before the write
    (``task_type``, ``prev_status``, ``prev_processed``, ``prev_started_at``, ``created_at`` and
    ``queued_at``). Only an applied write counts: a replayed activity attempt or a fenced-out run
    changed nothing. Finishing counts when the status changes to a final one, so a task whose
    automatic retry is abandoned (failed, then failed again by the reconciler) ends once.
    """
    applied = bool(row["applied"])
    MIRROR_WRITE.labels("applied" if applied else "skipped").observe(seconds)
    if not applied or row.get("task_type") is None:
        return
    task_type = type_label(row["task_type"])
    prev_status = row.get("prev_status")
    if write.event_type in _FINAL_EVENTS and write.status in OUTCOMES and prev_status != write.status:
        TASKS_FINISHED.labels(task_type, write.status).inc()
        created: datetime | None = row.get("created_at")
        if created is not None and write.completed_at is not None:
            TASK_DURATION.labels(task_type, write.status).observe(
                max(0.0, (write.completed_at - created).total_seconds())
            )
    elif write.event_type == RETRIED_EVENT:
        TASKS_RETRIED.labels(task_type).inc()
    queued: datetime | None = row.get("queued_at")
    if write.started_at is not None and row.get("prev_started_at") is None and queued is not None:
        QUEUE_WAIT.labels(task_type).observe(max(0.0, (write.started_at - queued).total_seconds()))
    grown = write.processed_records - int(row.get("prev_processed") or 0)
    if grown > 0:
        RECORDS_PROCESSED.labels(task_type).inc(grown)


def set_in_flight(counts: Mapping[tuple[str, str], int], known_types: list[str]) -> None:
    """Set ``co_tasks_in_flight`` to ``counts`` ((task type, status) → tasks; absent means 0).

    Every configured type (and ``other``) gets a value for every in-flight status, so a series that
    drops to zero reads 0 rather than vanishing (an alert on it then resolves).
    """
    totals: dict[tuple[str, str], int] = {
        (t, s): 0 for t in (*known_types, type_label(None)) for s in IN_FLIGHT_STATUSES
    }
    for (task_type, status), n in counts.items():
        key = (type_label(task_type), status)
        totals[key] = totals.get(key, 0) + n
    for (task_type, status), n in totals.items():
        TASKS_IN_FLIGHT.labels(task_type, status).set(n)
