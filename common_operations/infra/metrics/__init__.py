"""Prometheus metrics of tasks, of the Temporal SDK and of the gRPC server (issue 10, section 2).

Every metric here is prefixed ``co_`` and labelled only with bounded label sets: ``task_type`` (one
of the configured ``operations.task_types``; anything else is ``other``), ``status``, ``outcome``,
``method``, ``code`` and ``operation``, never a task id or a principal.

Which process exports what (a counter is counted once, by the process where the thing happened, so
dashboards add them up across replicas with ``sum()``):

- **API** (REST and gRPC): ``co_tasks_created_total``, ``co_tasks_cancelled_total`` (cancellations
  asked for through the API), ``co_progress_reports_total``, ``co_grpc_*`` and the HTTP metrics of
  ``web/metrics.py``.
- **Where a state change is written to the mirror** (the worker's mirror activity and its
  reconciler; an API process that records a run it found closed): ``co_tasks_finished_total``,
  ``co_tasks_retried_total``, ``co_task_duration_seconds``, ``co_task_queue_wait_seconds``,
  ``co_records_processed_total`` and ``co_mirror_write_seconds``.
- **Every process** refreshes the global gauges from Postgres and Temporal every
  ``observability.gauge_interval`` seconds: ``co_tasks_in_flight``, ``co_tasks_stuck``,
  ``common_operations_outbox_lag_seconds``. Every replica reports the same global value, so
  dashboards and alerts take ``max()`` of them, never ``sum()``.
- **Worker processes** also export the Temporal SDK's own metrics (``temporal_*``: worker slots,
  pollers, task latencies), drained from the SDK runtime into the same registry.
"""

from __future__ import annotations

from collections.abc import Iterable

OTHER = "other"

_known_types: frozenset[str] = frozenset()


def configure(task_types: Iterable[str]) -> None:
    """Set the task types that get their own ``task_type`` label value (the configured ones)."""
    global _known_types
    _known_types = frozenset(task_types)


def type_label(task_type: str | None) -> str:
    """The ``task_type`` label of ``task_type``: itself when configured, else ``other``.

    A type removed from the configuration, or a caller's unknown type, must not create a series of
    its own: the label set stays bounded by the configuration.
    """
    return task_type if task_type is not None and task_type in _known_types else OTHER
