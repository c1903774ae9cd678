"""The mirror is idempotent and ordered by sequence: replayed or late writes never move a task back."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

from temporalio.testing import ActivityEnvironment

from common_operations.activities.mirror import MirrorActivities
from common_operations.bootstrap import Runtime
from common_operations.domain.principal import Principal
from common_operations.domain.status import TaskStatus
from common_operations.domain.task import PageRequest, Task
from common_operations.domain.workflow_types import MirrorWrite
from common_operations.services.tasks import snapshot_write

WHO = Principal("mirror-test")


async def _orphan_task(runtime: Runtime) -> Task:
    """A task row with no workflow (we drive the mirror by hand)."""
    task = Task(
        id=__import__("uuid").uuid4(),
        task_type="process",
        entity_type="product",
        status=TaskStatus.PENDING,
        requested_by="mirror-test",
        created_at=datetime.now(UTC),
        updated_at=datetime.now(UTC),
    )
    await runtime.repository.insert_task(task, "created by test")
    return task


def _write(task: Task, seq: int, status: str, processed: int, event: str) -> MirrorWrite:
    return MirrorWrite(
        task_id=str(task.id),
        seq=seq,
        run_id="run-1",
        status=status,
        event_type=event,
        message=f"{event} #{seq}",
        total_records=100,
        processed_records=processed,
        progress_percentage=float(processed),
        at=datetime.now(UTC),
    )


async def test_late_and_replayed_activity_writes_do_not_move_the_task_back(runtime: Runtime) -> None:
    task = await _orphan_task(runtime)
    env = ActivityEnvironment()
    activity = MirrorActivities(runtime.repository).mirror_task_state

    started = _write(task, 1, "processing", 10, "task.started")
    progress = _write(task, 2, "processing", 50, "task.progress")
    done = _write(task, 3, "completed", 100, "task.completed")

    assert await env.run(activity, started) is True
    assert await env.run(activity, done) is True
    # seq 2 arrives after seq 3 (reordered local activity), then seq 3 is retried (replayed).
    assert await env.run(activity, progress) is False
    assert await env.run(activity, done) is False

    row = await runtime.tasks.get_task(WHO, task.id)
    assert row.status is TaskStatus.COMPLETED
    assert row.counts.processed == 100
    assert row.seq == 3
    assert row.run_id == "run-1"

    # A write that did not apply records nothing: with one writer per task it can only be a replay
    # of something already recorded, so the history holds each event exactly once.
    events = (await runtime.tasks.task_events(WHO, task.id, PageRequest())).items
    assert [(e.seq, e.event_type) for e in events] == [
        (0, "task.created"),
        (1, "task.started"),
        (3, "task.completed"),
    ]
    logs = (await runtime.tasks.task_logs(WHO, task.id, PageRequest())).items
    assert [log.seq for log in logs] == [0, 1, 3]


async def test_guarded_write_applies_only_on_the_expected_sequence(runtime: Runtime) -> None:
    task = await _orphan_task(runtime)
    cancel = snapshot_write(task, status=TaskStatus.CANCELLED, event="task.cancelled", message="cancel")
    # Someone else moved the task first: the guarded write (expecting seq 0) must not apply.
    assert await runtime.repository.apply(_write(task, 1, "processing", 5, "task.started"))
    assert not await runtime.repository.apply(cancel, expect_seq=0)
    assert (await runtime.tasks.get_task(WHO, task.id)).status is TaskStatus.PROCESSING
    events = (await runtime.tasks.task_events(WHO, task.id, PageRequest())).items
    assert "task.cancelled" not in [e.event_type for e in events]

    # With the right expectation it applies, with its event, in one statement.
    current = await runtime.tasks.get_task(WHO, task.id)
    cancel = replace(cancel, seq=current.seq + 1)
    assert await runtime.repository.apply(cancel, expect_seq=current.seq)
    events = (await runtime.tasks.task_events(WHO, task.id, PageRequest())).items
    assert events[-1].event_type == "task.cancelled"
    assert events[-1].status is TaskStatus.CANCELLED


async def test_write_for_a_deleted_task_is_dropped(runtime: Runtime) -> None:
    task = await _orphan_task(runtime)
    assert await runtime.repository.apply(_write(task, 1, "completed", 100, "task.completed"))
    assert await runtime.repository.delete_closed(task.id)
    # A retried activity after deletion neither fails nor resurrects rows.
    assert not await runtime.repository.apply(_write(task, 2, "completed", 100, "task.progress"))
    assert await runtime.repository.get(task.id) is None
