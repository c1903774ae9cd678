"""The role × operation × ownership table both transports are tested against, and its fixtures.

Written out here independently of ``common_operations.domain.authorization``: REST
(tests/web/test_authorization.py) and gRPC (tests/grpc_api/test_authorization.py) must both give
these outcomes. Tasks are prepared through the service as an admin, so each transport test only
measures what its own callers are answered.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

import asyncpg

from common_operations.bootstrap import Runtime
from common_operations.config import Settings, TaskTypeSettings
from common_operations.domain.principal import Principal
from common_operations.domain.status import TaskStatus
from common_operations.domain.task import CreateTask, ProgressReport, Task
from tests.helpers import assert_eventually

ROLES = ("admin", "operator", "service", "viewer", "user")
# own: requested for the caller; other: someone else's `process` task (a type whose reporters are
# "*", so services may read it); unreported: someone else's task of a type the caller's service
# does not report on.
WHOSE = ("own", "other", "unreported")
OPS = ("get", "logs", "events", "download", "cancel", "retry", "retry_failed_rows", "delete", "progress")
OK, DENIED, HIDDEN = "ok", "403", "404"

NARROW = "narrow_report"
NARROW_REPORTER = "svc-narrow"
SETUP = Principal("authz-setup", frozenset({"admin"}))

_ALL_OK = dict.fromkeys(WHOSE, OK)
_READ = ("get", "logs", "events", "download")
_CHANGE = ("cancel", "retry", "retry_failed_rows", "delete")

EXPECTED: dict[str, dict[str, dict[str, str]]] = {
    "admin": dict.fromkeys(OPS, _ALL_OK),
    "operator": {
        **dict.fromkeys((*_READ, "cancel", "retry", "retry_failed_rows"), _ALL_OK),
        "delete": {"own": OK, "other": DENIED, "unreported": DENIED},
        "progress": dict.fromkeys(WHOSE, DENIED),
    },
    "service": {
        **{op: {"own": OK, "other": OK, "unreported": HIDDEN} for op in _READ},
        **{op: {"own": OK, "other": DENIED, "unreported": HIDDEN} for op in _CHANGE},
        # `process` names "*" as its reporters: any service reports on it, own task or not.
        "progress": {"own": OK, "other": OK, "unreported": HIDDEN},
    },
    "viewer": {
        **{op: {"own": OK, "other": HIDDEN, "unreported": HIDDEN} for op in _READ},
        **{op: {"own": DENIED, "other": HIDDEN, "unreported": HIDDEN} for op in (*_CHANGE, "progress")},
    },
    "user": {
        **{op: {"own": OK, "other": HIDDEN, "unreported": HIDDEN} for op in (*_READ, *_CHANGE)},
        "progress": {"own": DENIED, "other": HIDDEN, "unreported": HIDDEN},
    },
}

# CreateTask: requestedBy empty (own) or naming someone else (other).
EXPECTED_CREATE: dict[str, dict[str, str]] = {
    "admin": {"own": OK, "other": OK},
    "operator": {"own": OK, "other": DENIED},
    "service": {"own": OK, "other": OK},
    "viewer": {"own": DENIED, "other": DENIED},
    "user": {"own": OK, "other": DENIED},
}

# ListTasks filtered by another requester's id: which of its tasks the caller sees.
EXPECTED_LIST: dict[str, set[str]] = {
    "admin": {"other", "unreported"},
    "operator": {"other", "unreported"},
    "service": {"other"},
    "viewer": set(),
    "user": set(),
}


def with_narrow_type(settings: Settings) -> Settings:
    """``settings`` plus an external type only :data:`NARROW_REPORTER` reports on."""
    settings.operations.task_types[NARROW] = TaskTypeSettings(kind="external", reporters=[NARROW_REPORTER])
    return settings


def roles_of(role: str) -> list[str]:
    """The token roles of a table role (a plain user has none)."""
    return [] if role == "user" else [role]


@dataclass(frozen=True, slots=True)
class Cast:
    """The caller of one role and the requester whose tasks are not its own."""

    role: str
    subject: str
    stranger: str


def cast(role: str) -> Cast:
    """Fresh subjects for one role's run of the table."""
    tag = uuid.uuid4().hex[:10]
    return Cast(role, f"{role}-{tag}", f"stranger-{tag}")


async def prepared(runtime: Runtime, who: Cast, whose: str, op: str) -> Task:
    """A task of ``whose`` in the state ``op`` needs (pending; failed for retry; final for delete)."""
    owner = who.subject if whose == "own" else who.stranger
    task_type = NARROW if whose == "unreported" else "process"
    task = await runtime.tasks.create_task(SETUP, CreateTask(task_type, "product", owner))
    if op == "retry":
        await runtime.tasks.update_progress(
            SETUP, task.id, ProgressReport(is_completed=True, error_message="boom")
        )
        return await _until(runtime, task, TaskStatus.FAILED)
    if op == "delete":
        await runtime.tasks.cancel_task(SETUP, task.id, "final for the delete case")
        return await _until(runtime, task, TaskStatus.CANCELLED)
    return task


async def _until(runtime: Runtime, task: Task, status: TaskStatus) -> Task:
    return await assert_eventually(
        lambda: runtime.tasks.get_task(SETUP, task.id), lambda t: t.status is status
    )


def differences(actual: dict[str, dict[str, str]], expected: dict[str, dict[str, str]]) -> list[str]:
    """Readable cells where ``actual`` differs from ``expected`` (empty: the tables agree)."""
    return [
        f"{op}/{whose}: expected {expected[op][whose]}, got {actual.get(op, {}).get(whose)}"
        for op in expected
        for whose in expected[op]
        if actual.get(op, {}).get(whose) != expected[op][whose]
    ]


async def audit_rows(runtime: Runtime, entity_id: str) -> list[dict[str, Any]]:
    """The admin audit log's rows of one entity, oldest first (action, actor, metadata)."""
    conn = await asyncpg.connect(runtime.settings.database.url)
    try:
        rows = await conn.fetch(
            "SELECT actor, action, metadata::text AS metadata FROM admin_audit_log"
            " WHERE entity_id = $1 ORDER BY id",
            entity_id,
        )
    finally:
        await conn.close()
    return [dict(r) for r in rows]
