"""The Temporal SDK's own metrics (worker slots, pollers, task latencies) in the process's registry.

The SDK's core can serve Prometheus itself (``PrometheusConfig`` binds a port of its own), but that
port would bypass ``/metrics``'s guard (``http.internal_roles``) and need one more free port per
process (``make run`` runs the API and the worker in one). Instead the runtime records into a
:class:`~temporalio.runtime.MetricBuffer`, which is drained into a collector of the default
registry: on every scrape, and every two seconds by the gauge refresher so it never overflows. The
SDK's names and labels are kept (``temporal_worker_task_slots_available{worker_type=…}``,
``temporal_num_pollers{poller_type=…}``, ``temporal_request_total{operation=…}``, …): they are the
names Temporal's own dashboards and documentation use. Durations are in seconds.
"""

from __future__ import annotations

import bisect
import re
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Final

from prometheus_client import REGISTRY
from prometheus_client.core import Metric
from prometheus_client.registry import Collector, CollectorRegistry
from temporalio.runtime import (
    BUFFERED_METRIC_KIND_COUNTER,
    BUFFERED_METRIC_KIND_GAUGE,
    MetricBuffer,
    MetricBufferDurationFormat,
    Runtime,
    TelemetryConfig,
)

from common_operations.infra.logs import temporal_core_logging

# Every SDK histogram is a latency (schedule-to-start, execution, RPC), in seconds here.
BUCKETS: Final = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
# Updates the core keeps between drains; it drops (and logs) updates beyond this.
BUFFER_SIZE: Final = 100_000

# The SDK metrics that deploy/ (dashboard, alert rules) use; a test checks a worker exports them.
SDK_METRICS_USED: Final = frozenset(
    {
        "temporal_worker_task_slots_available",
        "temporal_worker_task_slots_used",
        "temporal_num_pollers",
        "temporal_workflow_task_execution_latency",
    }
)

_INVALID_LABEL_CHARS = re.compile(r"[^a-zA-Z0-9_]")

_Labels = tuple[tuple[str, str], ...]


@dataclass(slots=True)
class _Histogram:
    buckets: list[int] = field(default_factory=lambda: [0] * (len(BUCKETS) + 1))
    total: float = 0.0
    count: int = 0

    def observe(self, value: float) -> None:
        self.buckets[bisect.bisect_left(BUCKETS, value)] += 1
        self.total += value
        self.count += 1


@dataclass(slots=True)
class _Family:
    kind: int
    description: str
    values: dict[_Labels, float] = field(default_factory=dict)
    histograms: dict[_Labels, _Histogram] = field(default_factory=dict)


class SdkMetricsCollector(Collector):
    """A Prometheus collector of a Temporal runtime's buffered metric updates."""

    def __init__(self, buffer: MetricBuffer) -> None:
        """Collect what ``buffer`` (set on a created :class:`Runtime`'s telemetry) records."""
        self._buffer = buffer
        self._families: dict[str, _Family] = {}
        # Scrapes may come from another thread than the refresher's drains.
        self._lock = threading.Lock()

    def drain(self) -> None:
        """Fold the buffer's pending updates into the running totals (counters add, gauges set)."""
        with self._lock:
            for update in self._buffer.retrieve_updates():
                metric = update.metric
                family = self._families.get(metric.name)
                if family is None:
                    family = self._families[metric.name] = _Family(
                        metric.kind, metric.description or f"Temporal SDK metric {metric.name}."
                    )
                labels = _labels(update.attributes)
                if metric.kind == BUFFERED_METRIC_KIND_COUNTER:
                    family.values[labels] = family.values.get(labels, 0.0) + float(update.value)
                elif metric.kind == BUFFERED_METRIC_KIND_GAUGE:
                    family.values[labels] = float(update.value)
                else:
                    family.histograms.setdefault(labels, _Histogram()).observe(float(update.value))

    def collect(self) -> Iterator[Metric]:
        """Drain, then yield one metric family per SDK metric seen so far."""
        self.drain()
        with self._lock:
            for name, family in sorted(self._families.items()):
                yield _family_metric(name, family)


def _labels(attributes: Mapping[str, object]) -> _Labels:
    return tuple(sorted((_INVALID_LABEL_CHARS.sub("_", k), str(v)) for k, v in attributes.items()))


def _family_metric(name: str, family: _Family) -> Metric:
    if family.kind == BUFFERED_METRIC_KIND_COUNTER:
        # A counter's samples end in _total (once: some SDK names already do).
        base = name.removesuffix("_total")
        metric = Metric(base, family.description, "counter")
        for labels, value in family.values.items():
            metric.add_sample(f"{base}_total", dict(labels), value)
        return metric
    if family.kind == BUFFERED_METRIC_KIND_GAUGE:
        metric = Metric(name, family.description, "gauge")
        for labels, value in family.values.items():
            metric.add_sample(name, dict(labels), value)
        return metric
    metric = Metric(name, family.description, "histogram")
    for labels, hist in family.histograms.items():
        cumulative = 0
        for bound, n in zip((*BUCKETS, float("inf")), hist.buckets, strict=True):
            cumulative += n
            le = "+Inf" if bound == float("inf") else repr(float(bound))
            metric.add_sample(f"{name}_bucket", {**dict(labels), "le": le}, cumulative)
        metric.add_sample(f"{name}_count", dict(labels), hist.count)
        metric.add_sample(f"{name}_sum", dict(labels), hist.total)
    return metric


def buffered_runtime() -> tuple[Runtime, MetricBuffer]:
    """A Temporal runtime that records its metrics into a new buffer (durations in seconds)."""
    buffer = MetricBuffer(BUFFER_SIZE, duration_format=MetricBufferDurationFormat.SECONDS)
    # The core's log lines keep going through the service's log handler (infra/logs.py).
    telemetry = TelemetryConfig(metrics=buffer, logging=temporal_core_logging())
    return Runtime(telemetry=telemetry), buffer


_installed: SdkMetricsCollector | None = None


def install_sdk_metrics(registry: CollectorRegistry = REGISTRY) -> bool:
    """Make the SDK's default runtime record metrics into ``registry`` (once per process).

    Must run before the process's Temporal clients connect: a client keeps the runtime it was
    created with.

    Returns:
        False if it was installed already.
    """
    global _installed
    if _installed is not None:
        return False
    runtime, buffer = buffered_runtime()
    Runtime.set_default(runtime, error_if_already_set=False)
    collector = SdkMetricsCollector(buffer)
    registry.register(collector)
    _installed = collector
    return True


def drain_sdk_metrics() -> None:
    """Drain the installed collector's buffer (nothing when the SDK's metrics are not installed)."""
    if _installed is not None:
        _installed.drain()
