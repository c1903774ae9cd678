"""Each task metric moves when it should (issue 10, section 2), against real Postgres and Temporal.

The registry is the process's default one, shared by every test of the session, so each assertion
compares a sample before and after the action (``delta``), never an absolute value.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import TypeVar

import httpx
import pytest
from prometheus_client import REGISTRY, CollectorRegistry, generate_latest
from temporalio.client import Client
from temporalio.worker import Worker

from common_operations.activities.mirror import MirrorActivities
from common_operations.activities.reconcile import ReconcileActivities
from common_operations.bootstrap import Runtime, open_runtime
from common_operations.config import Settings
from common_operations.domain.errors import InvalidTransition, ValidationFailed
from common_operations.domain.principal import Principal
from common_operations.domain.status import TaskStatus
from common_operations.domain.task import CreateTask, ProgressReport, Task
from common_operations.infra import metrics
from common_operations.infra.events.metrics import OUTBOX_LAG
from common_operations.infra.metrics import tasks as task_metrics
from common_operations.infra.metrics.gauges import GaugeRefresher, refresher_for
from common_operations.infra.metrics.temporal_sdk import (
    SDK_METRICS_USED,
    SdkMetricsCollector,
    buffered_runtime,
)
from common_operations.services.runs import workflow_input
from common_operations.web.app import create_app
from common_operations.web.metrics import create_metrics_app
from common_operations.worker import build_worker
from common_operations.workflows.reconciler_workflow import ReconcilerWorkflow
from tests.broken_workflow import BrokenTaskWorkflow
from tests.helpers import assert_eventually

T = TypeVar("T")

ADMIN = Principal("metrics-test", frozenset({"admin"}))


def sample(name: str, **labels: str) -> float:
    """The current value of one sample (0 when the series does not exist yet)."""
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def _value(value: T) -> T:
    return value


class Delta:
    """Samples read at construction, compared with their values at :meth:`of`."""

    def __init__(self, *series: tuple[str, dict[str, str]]) -> None:
        self._before = {self._key(n, lb): sample(n, **lb) for n, lb in series}

    @staticmethod
    def _key(name: str, labels: dict[str, str]) -> str:
        return name + repr(sorted(labels.items()))

    def of(self, name: str, **labels: str) -> float:
        return sample(name, **labels) - self._before[self._key(name, labels)]


def series(name: str, **labels: str) -> tuple[str, dict[str, str]]:
    return name, labels


@pytest.fixture
def configured(runtime: Runtime) -> Iterator[None]:
    """The runtime's types are the labelled ones (open_runtime does this; restored for safety)."""
    metrics.configure(runtime.settings.operations.task_types)
    yield
    metrics.configure(runtime.settings.operations.task_types)


def test_task_type_labels_are_bounded_by_the_configuration() -> None:
    metrics.configure(["process", "import"])
    assert metrics.type_label("process") == "process"
    assert metrics.type_label("made-up") == "other"
    assert metrics.type_label(None) == "other"


async def _create(runtime: Runtime, task_type: str = "process") -> Task:
    return await runtime.tasks.create_task(
        ADMIN, CreateTask(task_type=task_type, entity_type="product", requested_by="metrics-test")
    )


async def test_create_report_and_complete_move_their_metrics(
    runtime: Runtime, worker: Worker, configured: None
) -> None:
    d = Delta(
        series("co_tasks_created_total", task_type="process"),
        series("co_progress_reports_total", task_type="process", outcome="accepted", code="OK"),
        series("co_records_processed_total", task_type="process"),
        series("co_task_queue_wait_seconds_count", task_type="process"),
        series("co_tasks_finished_total", task_type="process", outcome="completed"),
        series("co_task_duration_seconds_count", task_type="process", outcome="completed"),
        series("co_mirror_write_seconds_count", outcome="applied"),
    )
    task = await _create(runtime)
    assert d.of("co_tasks_created_total", task_type="process") == 1

    await runtime.tasks.update_progress(
        ADMIN, task.id, ProgressReport(total_records=10, processed_records=4, success_records=4)
    )
    assert d.of("co_progress_reports_total", task_type="process", outcome="accepted", code="OK") == 1
    # The first report starts the task (mirrored before it is answered): one queue wait, 4 records.
    assert d.of("co_task_queue_wait_seconds_count", task_type="process") == 1
    assert d.of("co_records_processed_total", task_type="process") == 4
    assert d.of("co_tasks_finished_total", task_type="process", outcome="completed") == 0

    await runtime.tasks.update_progress(
        ADMIN, task.id, ProgressReport(processed_records=10, success_records=10, is_completed=True)
    )
    assert d.of("co_records_processed_total", task_type="process") == 10
    assert d.of("co_tasks_finished_total", task_type="process", outcome="completed") == 1
    assert d.of("co_task_duration_seconds_count", task_type="process", outcome="completed") == 1
    # Started once: a second start of the same task is no second queue wait.
    assert d.of("co_task_queue_wait_seconds_count", task_type="process") == 1
    # The created row plus the started and completed writes (the created row is the API's insert).
    assert d.of("co_mirror_write_seconds_count", outcome="applied") >= 2


async def test_rejected_reports_are_counted_by_kind(
    runtime: Runtime, worker: Worker, configured: None
) -> None:
    rejected = {"task_type": "process", "outcome": "rejected"}
    d = Delta(
        series("co_progress_reports_total", **rejected, code="INVALID_TRANSITION"),
        series("co_progress_reports_total", task_type="other", outcome="rejected", code="VALIDATION_FAILED"),
        series("co_progress_reports_total", task_type="other", outcome="rejected", code="TASK_NOT_FOUND"),
    )
    task = await _create(runtime)
    await runtime.tasks.cancel_task(ADMIN, task.id)
    with pytest.raises(InvalidTransition):
        await runtime.tasks.update_progress(ADMIN, task.id, ProgressReport(processed_records=1))
    assert d.of("co_progress_reports_total", **rejected, code="INVALID_TRANSITION") == 1
    # Refused before the task is read (its shape): the type is not known yet.
    with pytest.raises(ValidationFailed):
        await runtime.tasks.update_progress(ADMIN, task.id, ProgressReport(processed_records=-1))
    assert (
        d.of("co_progress_reports_total", task_type="other", outcome="rejected", code="VALIDATION_FAILED")
        == 1
    )
    with pytest.raises(Exception, match="not found"):
        await runtime.tasks.update_progress(ADMIN, uuid.uuid4(), ProgressReport(processed_records=1))
    assert (
        d.of("co_progress_reports_total", task_type="other", outcome="rejected", code="TASK_NOT_FOUND") == 1
    )


async def test_fail_retry_and_cancel_move_their_metrics(
    runtime: Runtime, worker: Worker, configured: None
) -> None:
    d = Delta(
        series("co_tasks_finished_total", task_type="process", outcome="failed"),
        series("co_tasks_finished_total", task_type="process", outcome="cancelled"),
        series("co_task_duration_seconds_count", task_type="process", outcome="failed"),
        series("co_tasks_retried_total", task_type="process"),
        series("co_tasks_cancelled_total", task_type="process"),
    )
    task = await _create(runtime)
    await runtime.tasks.update_progress(
        ADMIN, task.id, ProgressReport(processed_records=1, error_message="boom", is_completed=True)
    )
    assert d.of("co_tasks_finished_total", task_type="process", outcome="failed") == 1
    assert d.of("co_task_duration_seconds_count", task_type="process", outcome="failed") == 1

    retried = await runtime.tasks.retry_task(ADMIN, task.id)
    assert retried.status is TaskStatus.PENDING
    assert d.of("co_tasks_retried_total", task_type="process") == 1

    cancelled = await runtime.tasks.cancel_task(ADMIN, task.id, "metrics test")
    assert cancelled.status is TaskStatus.CANCELLED
    assert d.of("co_tasks_cancelled_total", task_type="process") == 1
    assert d.of("co_tasks_finished_total", task_type="process", outcome="cancelled") == 1
    # The failed attempt stays counted once: cancelling is another ending, not a second failure.
    assert d.of("co_tasks_finished_total", task_type="process", outcome="failed") == 1


async def test_in_flight_gauges_follow_the_mirror_after_a_refresh(
    runtime: Runtime, worker: Worker, configured: None
) -> None:
    refresher = refresher_for(runtime)
    await refresher.refresh()
    before = sample("co_tasks_in_flight", task_type="data_sync", status="pending")
    task = await _create(runtime, "data_sync")
    # Not counted by the create: the gauge is the mirror's global figure, read at the next refresh.
    assert sample("co_tasks_in_flight", task_type="data_sync", status="pending") == before
    await refresher.refresh()
    assert sample("co_tasks_in_flight", task_type="data_sync", status="pending") == before + 1
    await runtime.tasks.update_progress(ADMIN, task.id, ProgressReport(processed_records=1))
    await refresher.refresh()
    assert sample("co_tasks_in_flight", task_type="data_sync", status="pending") == before
    assert sample("co_tasks_in_flight", task_type="data_sync", status="processing") >= 1
    await runtime.tasks.cancel_task(ADMIN, task.id)
    # Every configured type has every in-flight status, zero or not (an alert on it can resolve).
    await refresher.refresh()
    for status in task_metrics.IN_FLIGHT_STATUSES:
        assert (
            REGISTRY.get_sample_value("co_tasks_in_flight", {"task_type": "import", "status": status})
            is not None
        )
    assert sample("co_gauges_refreshed_timestamp_seconds") > datetime.now(UTC).timestamp() - 60

    # A type that is not configured is counted under "other", never as a series of its own.
    metrics.configure([])
    try:
        other_before = sample("co_tasks_in_flight", task_type="other", status="pending")
        await _create_unconfigured_row(runtime)
        await GaugeRefresher(runtime.engine.pool, None, [], interval=60, outbox=False).refresh()
        assert sample("co_tasks_in_flight", task_type="other", status="pending") >= other_before + 1
    finally:
        metrics.configure(runtime.settings.operations.task_types)


async def _create_unconfigured_row(runtime: Runtime) -> None:
    at = datetime.now(UTC)
    task = Task(
        id=uuid.uuid4(),
        task_type="retired_type",
        entity_type="product",
        status=TaskStatus.PENDING,
        requested_by="metrics-test",
        created_at=at,
        updated_at=at,
    )
    await runtime.repository.insert_task(task, "created")


async def test_outbox_lag_is_refreshed_from_the_outbox(runtime: Runtime, configured: None) -> None:
    OUTBOX_LAG.set(-1)
    await refresher_for(runtime).refresh()
    assert sample("common_operations_outbox_lag_seconds") >= 0


async def test_stuck_tasks_gauge_follows_the_reconciler(runtime: Runtime, configured: None) -> None:
    """A run whose workflow task keeps failing raises co_tasks_stuck; once it is gone, it drops."""
    at = datetime.now(UTC) - timedelta(minutes=1)
    task = Task(
        id=uuid.uuid4(),
        task_type="process",
        entity_type="product",
        status=TaskStatus.PENDING,
        requested_by="metrics-test",
        created_at=at,
        updated_at=at,
    )
    await runtime.repository.insert_task(task, "created")
    task_metrics.TASKS_STUCK.set(0)
    async with Worker(
        runtime.client,
        task_queue=runtime.settings.temporal.task_queue,
        workflows=[BrokenTaskWorkflow, ReconcilerWorkflow],
        activities=[
            MirrorActivities(runtime.repository).mirror_task_state,
            ReconcileActivities(runtime.reconciler()).reconcile_tasks,
        ],
    ):
        await runtime.workflows.start(workflow_input(task, runtime.settings.operations))

        async def stuck() -> float:
            await runtime.reconciler().run_once()
            return sample("co_tasks_stuck")

        await assert_eventually(stuck, lambda n: n == 1, timeout=30, interval=0.5)
        await runtime.client.get_workflow_handle(f"task-{task.id}").terminate(reason="test over")
        await assert_eventually(stuck, lambda n: n == 0, timeout=30, interval=0.5)


async def test_metrics_endpoint_shows_the_task_metrics(
    runtime: Runtime, worker: Worker, configured: None
) -> None:
    await _create(runtime)
    transport = httpx.ASGITransport(app=create_app(runtime))  # type: ignore[arg-type]
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver.local") as api:
        text = (await api.get("/metrics")).text
    assert 'co_tasks_created_total{task_type="process"}' in text
    assert "# TYPE co_task_duration_seconds histogram" in text


async def test_temporal_sdk_worker_metrics_reach_the_registry(settings: Settings, client: Client) -> None:
    """A worker on a runtime with the metric buffer: its slots, pollers and task counts are exported."""
    sdk_runtime, buffer = buffered_runtime()
    own = await Client.connect(
        client.service_client.config.target_host, namespace=client.namespace, runtime=sdk_runtime
    )
    registry = CollectorRegistry()
    registry.register(SdkMetricsCollector(buffer))
    async with open_runtime(settings, client=own, with_worker=True) as rt, build_worker(rt):
        task = await rt.tasks.create_task(
            ADMIN, CreateTask(task_type="process", entity_type="product", requested_by="metrics-test")
        )
        await rt.tasks.update_progress(ADMIN, task.id, ProgressReport(processed_records=1, is_completed=True))

        def names() -> set[str]:
            return {m.name for m in registry.collect() if m.samples}

        # The run completes a moment after the completing report is answered.
        wanted = {*SDK_METRICS_USED, "temporal_workflow_completed"}
        await assert_eventually(lambda: _value(names()), lambda n: wanted <= n, timeout=20, interval=0.5)
    text = generate_latest(registry).decode()
    assert "temporal_worker_task_slots_available{" in text and 'worker_type="WorkflowWorker"' in text
    assert "temporal_request_total{" in text and "temporal_local_activity_total_total" not in text
    assert re.search(r'temporal_request_latency_bucket\{le="\+Inf",.*\} [1-9]', text)


async def test_a_worker_alone_serves_the_guarded_metrics(runtime: Runtime, configured: None) -> None:
    """``common-operations worker`` has no REST API: its /metrics app shows the same registry."""
    transport = httpx.ASGITransport(app=create_metrics_app(runtime))  # type: ignore[arg-type]
    async with httpx.AsyncClient(transport=transport, base_url="http://worker.local") as worker_api:
        # Dev mode: no credentials is the local admin (one of http.internal_roles).
        answer = await worker_api.get("/metrics")
        assert answer.status_code == 200
        assert "# TYPE co_tasks_finished_total counter" in answer.text
        assert (await worker_api.get("/api/v1/operations/tasks")).status_code == 404
        refused = await worker_api.get("/metrics", headers={"authorization": "Bearer not-a-token"})
        assert refused.status_code == 401
