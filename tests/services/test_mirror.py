"""The mirror has one writer per task: the owning run chain, fenced by its token and by sequence."""

from __future__ import annotations

import uuid
from dataclasses import replace
from datetime import UTC, datetime

from temporalio.testing import ActivityEnvironment

from common_operations.activities.mirror import MirrorActivities
from common_operations.bootstrap import Runtime
from common_operations.domain.principal import Principal
from common_operations.domain.status import TaskStatus
from common_operations.domain.task import PageRequest, Task
from common_operations.domain.workflow_types import LogLine, MirrorOutcome, MirrorWrite
from tests.helpers import forced_write

WHO = Principal("mirror-test", frozenset({"admin"}))
APPLIED, DUPLICATE, FENCED = MirrorOutcome.APPLIED, MirrorOutcome.DUPLICATE, MirrorOutcome.FENCED


async def _runless_task(runtime: Runtime) -> Task:
    """A task row with no workflow (we drive the mirror by hand)."""
    task = Task(
        id=uuid.uuid4(),
        task_type="process",
        entity_type="product",
        status=TaskStatus.PENDING,
        requested_by="mirror-test",
        created_at=datetime.now(UTC),
        updated_at=datetime.now(UTC),
    )
    await runtime.repository.insert_task(task, "created by test")
    return task


def _write(
    task: Task,
    seq: int,
    status: str,
    processed: int,
    event: str,
    *,
    owner: str = "run-A",
    claim: bool = False,
) -> MirrorWrite:
    return MirrorWrite(
        task_id=str(task.id),
        seq=seq,
        run_id=f"{owner}-latest",
        owner=owner,
        claim_seq=seq - 1 if claim else None,
        status=status,
        event_type=event,
        message=f"{event} #{seq}",
        total_records=100,
        processed_records=processed,
        progress_percentage=float(processed),
        at=datetime.now(UTC),
    )


async def _history(runtime: Runtime, task: Task) -> list[tuple[int, str]]:
    events = (await runtime.tasks.task_events(WHO, task.id, PageRequest())).items
    return [(e.seq, e.event_type) for e in events]


async def test_replayed_and_late_writes_of_the_owner_change_nothing(runtime: Runtime) -> None:
    task = await _runless_task(runtime)
    env = ActivityEnvironment()
    activity = MirrorActivities(runtime.repository).mirror_task_state

    started = _write(task, 1, "processing", 10, "task.started", claim=True)
    progress = _write(task, 2, "processing", 50, "task.progress")
    done = _write(task, 3, "completed", 100, "task.completed")

    assert await env.run(activity, started) is APPLIED
    assert await env.run(activity, started) is DUPLICATE  # the claim retried after it committed
    assert await env.run(activity, done) is APPLIED
    # seq 2 arrives after seq 3 (a reordered retry), then seq 3 is replayed.
    assert await env.run(activity, progress) is DUPLICATE
    assert await env.run(activity, done) is DUPLICATE

    row = await runtime.tasks.get_task(WHO, task.id)
    assert row.status is TaskStatus.COMPLETED
    assert row.counts.processed == 100
    assert row.seq == 3
    assert row.owner_run_id == "run-A" and row.run_id == "run-A-latest"
    # Nothing that did not apply is recorded: each event exactly once, in sequence order.
    assert await _history(runtime, task) == [(0, "task.created"), (1, "task.started"), (3, "task.completed")]
    logs = (await runtime.tasks.task_logs(WHO, task.id, PageRequest())).items
    assert [log.seq for log in logs] == [0, 1, 3]


async def test_a_write_lost_with_its_workflow_task_is_overwritten_by_the_path_taken_instead(
    runtime: Runtime,
) -> None:
    # Seen in the deployed fault test: a worker wrote seq 2 (progress) and died before its workflow
    # task completed; the retried workflow task also saw a cancel request and wrote seq 2 as the
    # cancellation. Taking that for a replay left the task 'processing' forever.
    task = await _runless_task(runtime)
    env = ActivityEnvironment()
    activity = MirrorActivities(runtime.repository).mirror_task_state
    assert await env.run(activity, _write(task, 1, "processing", 10, "task.started", claim=True)) is APPLIED
    assert await env.run(activity, _write(task, 2, "processing", 93, "task.progress")) is APPLIED
    cancelled = _write(task, 2, "cancelled", 93, "task.cancelled")
    assert await env.run(activity, cancelled) is APPLIED
    assert await env.run(activity, cancelled) is DUPLICATE  # its own retry is still a replay
    row = await runtime.tasks.get_task(WHO, task.id)
    assert (row.status, row.seq) == (TaskStatus.CANCELLED, 2)
    history = await _history(runtime, task)
    assert history == [(0, "task.created"), (1, "task.started"), (2, "task.progress"), (2, "task.cancelled")]


async def test_a_second_run_cannot_claim_a_task_another_run_owns(runtime: Runtime) -> None:
    task = await _runless_task(runtime)
    repo = runtime.repository
    assert await repo.apply(_write(task, 1, "processing", 5, "task.started", claim=True)) is APPLIED
    # Run B was started from the same sequence (two retries at once): its claim is refused, and so
    # is any later write of it; run A goes on.
    assert (
        await repo.apply(_write(task, 1, "processing", 7, "task.started", owner="run-B", claim=True))
        is FENCED
    )
    assert await repo.apply(_write(task, 2, "cancelled", 7, "task.cancelled", owner="run-B")) is FENCED
    assert await repo.apply(_write(task, 2, "processing", 9, "task.progress")) is APPLIED
    row = await repo.get(task.id)
    assert row is not None and row.status is TaskStatus.PROCESSING and row.counts.processed == 9
    assert await _history(runtime, task) == [(0, "task.created"), (1, "task.started"), (2, "task.progress")]


async def test_a_guarded_write_fences_the_previous_owner_out(runtime: Runtime) -> None:
    task = await _runless_task(runtime)
    repo = runtime.repository
    assert await repo.apply(_write(task, 1, "processing", 5, "task.started", claim=True)) is APPLIED
    current = await repo.get(task.id)
    assert current is not None

    failed = forced_write(current, status=TaskStatus.FAILED, event="task.failed", message="terminated")
    # Read before a write of the owner: the guard refuses it.
    assert await repo.apply(_write(task, 2, "processing", 6, "task.progress")) is APPLIED
    assert not await repo.apply_guarded(failed, expect_seq=current.seq, new_owner="closed:run-A")
    # With what the row holds now, it applies and hands the row to a closed owner.
    current = await repo.get(task.id)
    assert current is not None
    failed = forced_write(current, status=TaskStatus.FAILED, event="task.failed", message="terminated")
    assert await repo.apply_guarded(failed, expect_seq=current.seq, new_owner="closed:run-A")
    # A late write of run A (same sequence number as the guarded one) is fenced, not a "replay".
    assert await repo.apply(_write(task, 3, "completed", 100, "task.completed")) is FENCED
    row = await repo.get(task.id)
    assert row is not None and row.status is TaskStatus.FAILED and row.owner_run_id == "closed:run-A"
    # A retry run started from the failed row can take it over.
    assert (
        await repo.apply(_write(task, 4, "pending", 6, "task.retried", owner="run-C", claim=True)) is APPLIED
    )
    assert [e for _, e in await _history(runtime, task)] == [
        "task.created",
        "task.started",
        "task.progress",
        "task.failed",
        "task.retried",
    ]


async def test_one_write_carries_buffered_log_lines_in_order(runtime: Runtime) -> None:
    task = await _runless_task(runtime)
    first = _write(task, 1, "processing", 10, "task.started", claim=True)
    buffered = [LogLine("info", f"worker says {i}") for i in range(3)]
    assert await runtime.repository.apply(replace(first, logs=buffered)) is APPLIED
    logs = (await runtime.tasks.task_logs(WHO, task.id, PageRequest())).items
    assert [(log.seq, log.message) for log in logs] == [
        (0, "created by test"),
        (1, "worker says 0"),
        (1, "worker says 1"),
        (1, "worker says 2"),
    ]


async def test_annotations_sit_beside_the_state_once_per_sequence(runtime: Runtime) -> None:
    task = await _runless_task(runtime)
    repo = runtime.repository
    assert await repo.apply(_write(task, 1, "processing", 10, "task.started", claim=True)) is APPLIED
    assert await repo.annotate(task.id, "task.stuck", "workflow task failing", problems="x")
    assert not await repo.annotate(task.id, "task.stuck", "workflow task failing", problems="x")
    # The owner's next write is not disturbed by the annotation.
    assert await repo.apply(_write(task, 2, "processing", 20, "task.progress")) is APPLIED
    assert await repo.annotate(task.id, "task.stuck", "still failing")
    assert await _history(runtime, task) == [
        (0, "task.created"),
        (1, "task.started"),
        (1, "task.stuck"),
        (2, "task.progress"),
        (2, "task.stuck"),
    ]
    assert not await repo.annotate(uuid.uuid4(), "task.stuck", "no such task")


async def test_write_for_a_deleted_task_is_fenced(runtime: Runtime) -> None:
    task = await _runless_task(runtime)
    repo = runtime.repository
    assert await repo.apply(_write(task, 1, "completed", 100, "task.completed", claim=True)) is APPLIED
    assert await repo.delete_closed(task.id)
    # A run still writing after deletion neither fails nor resurrects rows: it is told to stop.
    assert await repo.apply(_write(task, 2, "completed", 100, "task.progress")) is FENCED
    assert await repo.get(task.id) is None
