"""Roles and ownership in the service layer, against real Postgres, Temporal and Redis.

The role × operation table itself is tested pure (tests/domain/test_authorization.py) and through
both transports (tests/web|grpc_api/test_authorization.py); here: what the decisions do to data —
on-behalf creation and its event, list filtering in SQL, reports refused without effect, audit rows,
the cached read path, and settings reads.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import asyncpg
import pytest
from redis.asyncio import Redis
from temporalio.worker import Worker

from common_operations.bootstrap import Runtime
from common_operations.config import Settings, TaskTypeSettings
from common_operations.domain.errors import PermissionDenied, TaskNotFound
from common_operations.domain.principal import Principal
from common_operations.domain.status import TaskStatus
from common_operations.domain.task import CreateTask, PageRequest, ProgressReport, Task, TaskQuery
from tests.helpers import assert_eventually

# A type only one service may report on (the shared test types say "*").
NARROW = "narrow_report"
NARROW_REPORTER = "svc-narrow"
ADMIN = Principal("authz-admin", frozenset({"admin"}))


@pytest.fixture
def settings(settings: Settings, redis_url: str) -> Settings:
    """The test settings with a narrowly reported type and Redis (GetTask's cached path)."""
    settings.operations.task_types[NARROW] = TaskTypeSettings(kind="external", reporters=[NARROW_REPORTER])
    settings.redis_url = redis_url
    return settings


def tag() -> str:
    """A suffix unique to one test, so list assertions ignore other tests' tasks."""
    return uuid.uuid4().hex[:10]


def user(name: str) -> Principal:
    """A verified end user (no role)."""
    return Principal(name, via="jwt")


def role(name: str, *roles: str) -> Principal:
    """A verified principal with ``roles``."""
    return Principal(name, frozenset(roles), via="jwt")


async def create(
    runtime: Runtime, who: Principal, task_type: str = "process", requested_by: str = ""
) -> Task:
    """A task ``who`` creates (for ``requested_by``, default itself)."""
    return await runtime.tasks.create_task(who, CreateTask(task_type, "product", requested_by))


async def audit_rows(runtime: Runtime, entity_id: str) -> list[dict[str, Any]]:
    """The admin audit log's rows of one entity, oldest first, JSON columns decoded."""
    conn = await asyncpg.connect(runtime.settings.database.url)
    try:
        rows = await conn.fetch(
            "SELECT actor, actor_roles, action, entity_type, entity_id, old_state, new_state, metadata "
            "FROM admin_audit_log WHERE entity_id = $1 ORDER BY id",
            entity_id,
        )
    finally:
        await conn.close()
    decoded = []
    for row in rows:
        item = dict(row)
        for column in ("actor_roles", "old_state", "new_state", "metadata"):
            if isinstance(item[column], str):
                item[column] = json.loads(item[column])
        decoded.append(item)
    return decoded


async def final(runtime: Runtime, task: Task, owner: Principal) -> Task:
    """Cancel ``task`` as its ``owner`` (no audit row) and wait until the mirror shows it cancelled."""
    await runtime.tasks.cancel_task(owner, task.id, "made final for an authorization test")
    return await assert_eventually(
        lambda: runtime.tasks.get_task(ADMIN, task.id), lambda t: t.status is TaskStatus.CANCELLED
    )


async def test_a_service_creates_on_behalf_of_a_user(runtime: Runtime, worker: Worker) -> None:
    """requestedBy is the user, createdBy the service; the event says onBehalfOf; both see it."""
    t = tag()
    svc, alice = role(f"svc-{t}", "service"), user(f"alice-{t}")
    task = await create(runtime, svc, requested_by=alice.subject)
    assert (task.requested_by, task.created_by) == (alice.subject, svc.subject)

    events = (await runtime.tasks.task_events(alice, task.id, PageRequest())).items
    created = events[0]
    assert created.event_type == "task.created"
    assert created.payload["onBehalfOf"] == alice.subject
    assert created.payload["createdBy"] == svc.subject
    logs = (await runtime.tasks.task_logs(svc, task.id, PageRequest())).items
    assert logs[0].message == f"task created by {svc.subject} on behalf of {alice.subject}"

    # Mine for both: the requester and the creator.
    assert (await runtime.tasks.get_task(svc, task.id)).id == task.id
    assert (await runtime.tasks.get_task(alice, task.id)).id == task.id
    # A plain create names nobody else.
    own = await create(runtime, alice)
    own_events = (await runtime.tasks.task_events(alice, own.id, PageRequest())).items
    assert "onBehalfOf" not in own_events[0].payload
    assert own.created_by == alice.subject


@pytest.mark.parametrize("who", ["user", "operator", "viewer"])
async def test_only_services_and_admins_name_another_requester(runtime: Runtime, who: str) -> None:
    """A user or operator naming someone else is refused, and nothing is written."""
    t = tag()
    caller = user(f"u-{t}") if who == "user" else role(f"{who}-{t}", who)
    victim = f"victim-{t}"
    with pytest.raises(PermissionDenied):
        await create(runtime, caller, requested_by=victim)
    page = await runtime.tasks.list_tasks(ADMIN, TaskQuery(requested_by=victim))
    assert page.total == 0


async def test_a_viewer_creates_nothing_but_reads_its_own(runtime: Runtime, worker: Worker) -> None:
    """A viewer sees tasks made for it, and may not change them."""
    t = tag()
    viewer = role(f"viewer-{t}", "viewer")
    with pytest.raises(PermissionDenied):
        await create(runtime, viewer)
    task = await create(runtime, role(f"svc-{t}", "service"), requested_by=viewer.subject)
    assert (await runtime.tasks.get_task(viewer, task.id)).id == task.id
    with pytest.raises(PermissionDenied):
        await runtime.tasks.cancel_task(viewer, task.id)
    assert (await runtime.tasks.get_task(ADMIN, task.id)).status is TaskStatus.PENDING


async def test_list_shows_only_what_the_caller_may_read(runtime: Runtime, worker: Worker) -> None:
    """Filtered in SQL: own tasks for users, every task for operators, reported types for services."""
    t = tag()
    alice, bob = user(f"alice-{t}"), user(f"bob-{t}")
    mine = [await create(runtime, alice) for _ in range(2)]
    made_for_alice = await create(runtime, role(f"svc-{t}", "service"), requested_by=alice.subject)
    narrow = await create(runtime, bob, NARROW)
    await create(runtime, bob)

    def ids(page: Any) -> set[uuid.UUID]:
        return {task.id for task in page.items}

    alice_page = await runtime.tasks.list_tasks(alice, TaskQuery(page_size=100))
    assert ids(alice_page) == {*(x.id for x in mine), made_for_alice.id}
    assert alice_page.total == 3
    # A filter for someone else's tasks: an empty page, not an error.
    empty = await runtime.tasks.list_tasks(alice, TaskQuery(requested_by=bob.subject))
    assert (empty.items, empty.total) == ([], 0)

    operator = role(f"op-{t}", "operator")
    assert (await runtime.tasks.list_tasks(operator, TaskQuery(requested_by=bob.subject))).total == 2

    # A service sees the tasks of the types it reports on, not the others' other tasks.
    reporter = role(NARROW_REPORTER, "service")
    assert ids(await runtime.tasks.list_tasks(reporter, TaskQuery(requested_by=bob.subject))) >= {narrow.id}
    other_service = role(f"svc-other-{t}", "service")
    seen = await runtime.tasks.list_tasks(
        other_service, TaskQuery(requested_by=bob.subject, task_type=NARROW)
    )
    assert seen.total == 0


async def test_reports_only_from_reporters(runtime: Runtime, worker: Worker) -> None:
    """An end user never reports (403, task unchanged); a service must be a reporter of the type."""
    t = tag()
    alice = user(f"alice-{t}")
    task = await create(runtime, alice, NARROW)
    done = ProgressReport(total_records=1, processed_records=1, success_records=1, is_completed=True)
    with pytest.raises(PermissionDenied, match="an end user can never complete a task with a report"):
        await runtime.tasks.update_progress(alice, task.id, done)
    unchanged = await runtime.tasks.get_task(ADMIN, task.id)
    assert unchanged.status is TaskStatus.PENDING and unchanged.counts.processed == 0

    # A service that is not a reporter of the type: another's task is hidden, its own refused.
    other_service = role(f"svc-other-{t}", "service")
    with pytest.raises(TaskNotFound):
        await runtime.tasks.update_progress(other_service, task.id, done)
    its_own = await create(runtime, other_service, NARROW)
    with pytest.raises(PermissionDenied):
        await runtime.tasks.update_progress(other_service, its_own.id, done)

    reported = await runtime.tasks.update_progress(role(NARROW_REPORTER, "service"), task.id, done)
    assert reported.status is TaskStatus.COMPLETED


async def test_a_hidden_task_reads_exactly_like_a_missing_one(
    runtime: Runtime, worker: Worker, redis: Redis
) -> None:
    """Through the Redis cache and without: the same TaskNotFound as for an id that never existed."""
    t = tag()
    alice, bob = user(f"alice-{t}"), user(f"bob-{t}")
    task = await create(runtime, alice)
    assert runtime.tasks.cache is not None
    for _ in range(2):  # the second read is served from the cache
        assert (await runtime.tasks.get_task(alice, task.id)).id == task.id
    assert await runtime.tasks.cache.get(task.id) is not None

    missing = uuid.uuid4()
    with pytest.raises(TaskNotFound) as absent:
        await runtime.tasks.get_task(bob, missing)
    for read in (
        lambda: runtime.tasks.get_task(bob, task.id),
        lambda: runtime.tasks.task_logs(bob, task.id, PageRequest()),
        lambda: runtime.tasks.task_events(bob, task.id, PageRequest()),
        lambda: runtime.tasks.download_url(bob, task.id),
        lambda: runtime.tasks.cancel_task(bob, task.id),
        lambda: runtime.tasks.delete_task(bob, task.id),
    ):
        with pytest.raises(TaskNotFound) as hidden:
            await read()
        assert hidden.value.message.replace(str(task.id), str(missing)) == absent.value.message
        assert hidden.value.details == {"id": str(task.id)}


async def test_every_delete_is_audited_with_the_task_as_it_was(runtime: Runtime, worker: Worker) -> None:
    """task.delete rows hold the task's snapshot; a refused delete writes nothing."""
    t = tag()
    alice = user(f"alice-{t}")
    own = await final(runtime, await create(runtime, alice), alice)
    await runtime.tasks.delete_task(alice, own.id)
    (row,) = await audit_rows(runtime, str(own.id))
    assert (row["actor"], row["action"], row["entity_type"]) == (alice.subject, "task.delete", "task")
    assert row["old_state"]["id"] == str(own.id)
    assert row["old_state"]["status"] == "cancelled"
    assert row["old_state"]["requestedBy"] == alice.subject
    assert row["new_state"] is None
    assert row["metadata"]["owner"] == alice.subject

    others = await final(runtime, await create(runtime, alice), alice)
    operator = role(f"op-{t}", "operator")
    with pytest.raises(PermissionDenied):
        await runtime.tasks.delete_task(operator, others.id)
    assert await audit_rows(runtime, str(others.id)) == []
    await runtime.tasks.delete_task(ADMIN, others.id)
    (row,) = await audit_rows(runtime, str(others.id))
    assert (row["actor"], row["actor_roles"], row["action"]) == (ADMIN.subject, ["admin"], "task.delete")


async def test_cancel_and_retry_of_anothers_task_are_audited(runtime: Runtime, worker: Worker) -> None:
    """An operator acting on a user's task leaves a row; the user acting on its own leaves none."""
    t = tag()
    alice = user(f"alice-{t}")
    operator = role(f"op-{t}", "operator")

    own = await create(runtime, alice)
    await runtime.tasks.cancel_task(alice, own.id, "changed my mind")
    assert await audit_rows(runtime, str(own.id)) == []

    task = await create(runtime, alice)
    await runtime.tasks.cancel_task(operator, task.id, "stuck upstream")
    (row,) = await audit_rows(runtime, str(task.id))
    assert (row["actor"], row["action"]) == (operator.subject, "task.cancel")
    assert row["metadata"]["owner"] == alice.subject
    assert row["metadata"]["reason"] == "stuck upstream"

    failing = await create(runtime, alice)
    boom = ProgressReport(is_completed=True, error_message="boom")
    await runtime.tasks.update_progress(role(f"svc-{t}", "service"), failing.id, boom)
    await assert_eventually(
        lambda: runtime.tasks.get_task(alice, failing.id), lambda x: x.status is TaskStatus.FAILED
    )
    await runtime.tasks.retry_task(operator, failing.id)
    (row,) = await audit_rows(runtime, str(failing.id))
    assert (row["actor"], row["action"], row["metadata"]["owner"]) == (
        operator.subject,
        "task.retry",
        alice.subject,
    )


async def test_operators_read_settings_but_only_admins_change_them(runtime: Runtime) -> None:
    """The payment group: operator read yes, write no; users neither."""
    operator = role("authz-operator", "operator")
    view = await runtime.settings_groups.get(operator, "payment")
    assert view.group == "payment"
    with pytest.raises(PermissionDenied):
        await runtime.settings_groups.update(operator, "payment", {}, None)
    with pytest.raises(PermissionDenied):
        await runtime.settings_groups.get(user("authz-user"), "payment")


async def test_only_admins_create_retention_tasks(runtime: Runtime) -> None:
    """A retention task deletes everyone's old tasks: an operator or user may not start one."""
    for who in (user(f"u-{tag()}"), role(f"op-{tag()}", "operator"), role(f"svc-{tag()}", "service")):
        with pytest.raises(PermissionDenied, match="admin"):
            await runtime.tasks.create_task(who, CreateTask("retention", "tasks", ""))
