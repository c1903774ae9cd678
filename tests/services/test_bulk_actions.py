"""Bulk actions through the service layer: one task that cancels or retries every matching task.

Each test's tasks have a requester of their own, so the filters reach only them in the shared
database.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest
from temporalio.worker import Worker

from common_operations.activities import bulk_actions as bulk_activity
from common_operations.bootstrap import Runtime
from common_operations.db.audit_repository import AuditQuery
from common_operations.domain.bulk_actions import (
    BULK_ACTION_AUDIT,
    BulkAction,
    BulkActionKind,
    BulkFilter,
    bulk_action_from_params,
)
from common_operations.domain.errors import (
    PermissionDenied,
    Unauthenticated,
    UnknownTaskType,
    ValidationFailed,
)
from common_operations.domain.principal import ANONYMOUS, Principal
from common_operations.domain.status import TaskStatus
from common_operations.domain.task import CreateTask, PageRequest, ProgressReport, Task, TaskQuery
from common_operations.services.bulk_actions import BulkActionService
from tests.helpers import assert_eventually

# Creates tasks for the tests' requesters and reports on them as their worker would.
ADMIN = Principal("bulk-admin", frozenset({"admin"}))


def _operator() -> Principal:
    return Principal(f"bulk-op-{uuid.uuid4().hex[:8]}", frozenset({"operator"}), via="jwt")


def _who() -> str:
    return f"bulk-{uuid.uuid4().hex[:10]}"


async def _final(runtime: Runtime, task_id: uuid.UUID, timeout: float = 60.0) -> Task:
    return await assert_eventually(
        lambda: runtime.tasks.get_task(ADMIN, task_id),
        lambda t: t.status.is_closed and t.next_retry_at is None,
        timeout=timeout,
        interval=0.2,
    )


async def _failed(runtime: Runtime, who: str, *, max_retries: int | None = None) -> Task:
    svc = runtime.tasks
    task = await svc.create_task(ADMIN, CreateTask("process", "product", who, max_retries=max_retries))
    await svc.update_progress(ADMIN, task.id, ProgressReport(error_message="boom", is_completed=True))
    return await assert_eventually(
        lambda: svc.get_task(ADMIN, task.id), lambda t: t.status is TaskStatus.FAILED, interval=0.1
    )


async def test_bulk_cancel_of_n_tasks_is_one_task_whose_counts_reach_n(
    runtime: Runtime, worker: Worker
) -> None:
    who, op = _who(), _operator()
    svc = runtime.tasks
    pending = [await svc.create_task(ADMIN, CreateTask("process", "product", who)) for _ in range(4)]
    processing = await svc.create_task(ADMIN, CreateTask("process", "product", who))
    await svc.update_progress(ADMIN, processing.id, ProgressReport(total_records=10, processed_records=1))
    done = await svc.create_task(ADMIN, CreateTask("process", "product", who))
    await svc.update_progress(
        ADMIN, done.id, ProgressReport(total_records=1, processed_records=1, is_completed=True)
    )
    other_type = await svc.create_task(ADMIN, CreateTask("data_sync", "product", who))

    bulk = await BulkActionService(svc).start(
        op,
        BulkAction(
            BulkActionKind.CANCEL, BulkFilter(task_type="process", requested_by=who), reason="maintenance"
        ),
    )
    assert bulk.task_type == "bulk_action" and bulk.requested_by == op.subject
    assert bulk.params["action"] == "cancel"
    assert bulk.params["filter"] == {"taskType": "process", "requestedBy": who}

    final = await _final(runtime, bulk.id)
    assert final.status is TaskStatus.COMPLETED, final.error_message
    assert (final.counts.total, final.counts.processed, final.counts.success, final.counts.failed) == (
        5,
        5,
        5,
        0,
    )
    for task in [*pending, processing]:
        current = await svc.get_task(ADMIN, task.id)
        assert current.status is TaskStatus.CANCELLED
        # Each cancellation says which bulk action made it, with the operator's reason.
        logs = await svc.task_logs(ADMIN, task.id, PageRequest())
        assert any(f"bulk action {bulk.id}: maintenance" in line.message for line in logs.items)
    assert (await svc.get_task(ADMIN, done.id)).status is TaskStatus.COMPLETED
    assert (await svc.get_task(ADMIN, other_type.id)).status is TaskStatus.PENDING

    # Who asked is in the audit log (with the roles the job acted with); every cancellation of
    # someone else's task is audited as the operator, as if done one by one.
    audit = runtime.audit
    started = await audit.page(
        AuditQuery(entity_type="task", entity_id=str(bulk.id), action=BULK_ACTION_AUDIT)
    )
    (row,) = started.items
    assert row.actor == op.subject and row.actor_roles == ["operator"]
    cancels = await audit.page(AuditQuery(actor=op.subject, action="task.cancel", page_size=50))
    assert {r.entity_id for r in cancels.items} == {str(t.id) for t in [*pending, processing]}
    assert all(r.metadata["reason"] == f"bulk action {bulk.id}: maintenance" for r in cancels.items)


async def test_bulk_retry_counts_tasks_without_retries_left_as_refused(
    runtime: Runtime, worker: Worker
) -> None:
    who, op = _who(), _operator()
    since = datetime.now(UTC) - timedelta(minutes=1)
    retryable = [await _failed(runtime, who) for _ in range(2)]
    exhausted = await _failed(runtime, who, max_retries=0)

    bulk = await BulkActionService(runtime.tasks).start(
        op, BulkAction(BulkActionKind.RETRY, BulkFilter(task_type="process", requested_by=who, since=since))
    )
    final = await _final(runtime, bulk.id)
    assert final.status is TaskStatus.COMPLETED, final.error_message
    assert (final.counts.total, final.counts.processed, final.counts.success, final.counts.failed) == (
        3,
        3,
        2,
        1,
    )
    # The refusal is quoted in the closing log line, with the task and why.
    logs = await runtime.tasks.task_logs(ADMIN, bulk.id, PageRequest())
    closing = [line.message for line in logs.items if "1 refused" in line.message]
    assert closing and str(exhausted.id) in closing[0], [line.message for line in logs.items]
    for task in retryable:
        current = await runtime.tasks.get_task(ADMIN, task.id)
        assert current.status is TaskStatus.PENDING and current.retry_count == 1
    assert (await runtime.tasks.get_task(ADMIN, exhausted.id)).status is TaskStatus.FAILED


@pytest.mark.parametrize("roles", [set(), {"viewer"}, {"service"}], ids=["user", "viewer", "service"])
async def test_only_operators_and_admins_start_bulk_actions(runtime: Runtime, roles: set[str]) -> None:
    caller = Principal(f"bulk-nobody-{uuid.uuid4().hex[:6]}", frozenset(roles), via="jwt")
    action = BulkAction(BulkActionKind.CANCEL, BulkFilter(requested_by=caller.subject))
    with pytest.raises(PermissionDenied, match="admin or operator"):
        await BulkActionService(runtime.tasks).start(caller, action)
    with pytest.raises(Unauthenticated):
        await BulkActionService(runtime.tasks).start(ANONYMOUS, action)
    # Nothing was created for the refused caller.
    assert not (await runtime.tasks.list_tasks(ADMIN, TaskQuery(requested_by=caller.subject))).items


@pytest.mark.parametrize(
    ("action", "field"),
    [
        (BulkAction(BulkActionKind.CANCEL, BulkFilter()), "filter.taskType"),
        (BulkAction(BulkActionKind.CANCEL, BulkFilter(task_type="  ")), "filter.taskType"),
        (
            BulkAction(BulkActionKind.CANCEL, BulkFilter(task_type="process", status=TaskStatus.FAILED)),
            "filter.status",
        ),
        (
            BulkAction(BulkActionKind.RETRY, BulkFilter(task_type="process", status=TaskStatus.PENDING)),
            "filter.status",
        ),
        (
            BulkAction(
                BulkActionKind.RETRY,
                BulkFilter(
                    task_type="process",
                    since=datetime(2030, 1, 1, tzinfo=UTC),
                    until=datetime(2029, 1, 1, tzinfo=UTC),
                ),
            ),
            "filter.since",
        ),
        (BulkAction(BulkActionKind.CANCEL, BulkFilter(task_type="process"), reason="x" * 1000), "reason"),
    ],
)
async def test_bad_bulk_actions_are_refused_before_anything_starts(
    runtime: Runtime, action: BulkAction, field: str
) -> None:
    with pytest.raises(ValidationFailed) as caught:
        await BulkActionService(runtime.tasks).start(_operator(), action)
    assert caught.value.details["field"] == field


async def test_unknown_task_type_is_refused(runtime: Runtime) -> None:
    with pytest.raises(UnknownTaskType):
        await BulkActionService(runtime.tasks).start(
            _operator(), BulkAction(BulkActionKind.CANCEL, BulkFilter(task_type="no_such_type"))
        )


def test_params_round_trip() -> None:
    action = BulkAction(
        BulkActionKind.CANCEL,
        BulkFilter(task_type="process", status=TaskStatus.PENDING, since=datetime(2026, 1, 1, tzinfo=UTC)),
        reason="why",
    )
    assert bulk_action_from_params(action.to_params()) == action
    with pytest.raises(ValidationFailed):
        bulk_action_from_params({"action": "cancel", "filter": "everything"})
    with pytest.raises(ValidationFailed):
        bulk_action_from_params({"action": "delete", "filter": {"taskType": "process"}})


async def test_a_bulk_action_task_made_by_hand_acts_on_nothing(
    runtime: Runtime, worker: Worker, monkeypatch: pytest.MonkeyPatch
) -> None:
    # CreateTask lets anyone make a bulk_action task with any params; without the audit row the
    # bulk-actions service writes, its job has no actor and fails instead of acting.
    monkeypatch.setattr(bulk_activity, "ACTOR_WAIT_SECONDS", 1.0)
    who = _who()
    victim = await runtime.tasks.create_task(ADMIN, CreateTask("process", "product", who))
    user = Principal(who, frozenset(), via="jwt")
    forged = await runtime.tasks.create_task(
        user,
        CreateTask(
            "bulk_action",
            "tasks",
            who,
            params={"action": "cancel", "filter": {"requestedBy": who}, "actor": {"roles": ["admin"]}},
        ),
    )
    final = await _final(runtime, forged.id)
    assert final.status is TaskStatus.FAILED
    assert "no record of who asked for this bulk action" in (final.error_message or "")
    assert (await runtime.tasks.get_task(ADMIN, victim.id)).status is TaskStatus.PENDING


async def test_a_bulk_action_matching_nothing_completes_with_zero_counts(
    runtime: Runtime, worker: Worker
) -> None:
    who, op = _who(), _operator()
    bulk = await BulkActionService(runtime.tasks).start(
        op, BulkAction(BulkActionKind.CANCEL, BulkFilter(task_type="process", requested_by=who))
    )
    final = await _final(runtime, bulk.id)
    assert final.status is TaskStatus.COMPLETED
    assert (final.counts.total, final.counts.processed) == (0, 0)
