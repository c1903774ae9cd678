"""Who may do what with a task: the one table of roles × operations × ownership.

Pure rules, no I/O. :class:`~common_operations.services.tasks.TaskService` reads the task, then asks
:func:`authorize`; REST and gRPC never decide anything themselves, so both answer alike.

A task is *mine* for a principal when its ``requestedBy`` or its ``createdBy`` is the principal's
subject. A *reporter* of a task type is a principal with the ``service`` role that the type's
``reporters`` list names (or that says ``"*"``).

=================== ======= ======== ================ ====== ======
operation           admin   operator service          viewer user
=================== ======= ======== ================ ====== ======
create              any     own      own or on behalf —      own
read/list           all     all      own + reporter   own    own
cancel              all     all      own              —      own
retry               all     all      own              —      own
retry failed rows   all     all      own              —      own
delete              all     own      own              —      own
report progress     all     —        reporter         —      —
=================== ======= ======== ================ ====== ======

Tasks of the built-in ``retention`` type (it deletes everyone's old tasks) are created by admins only.

*any* / *on behalf*: ``requestedBy`` may name someone else (the created event records
``onBehalfOf``); *own*: ``requestedBy`` must be empty or the caller. A principal holding several
roles gets the union of their rights; one holding none of them is a plain *user*.

A task the caller may not read is answered exactly like a missing one (``TASK_NOT_FOUND``): its
existence does not leak. A task it may read but not change is ``PERMISSION_DENIED``.
"""

from __future__ import annotations

import uuid
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from enum import Enum, StrEnum

from common_operations.domain.errors import PermissionDenied, TaskNotFound
from common_operations.domain.principal import (
    ADMIN_ROLE,
    OPERATOR_ROLE,
    SERVICE_ROLE,
    VIEWER_ROLE,
    Principal,
    require_credentials,
)
from common_operations.domain.task import Task

# A principal with none of the four roles: creates and manages its own tasks.
USER_ROLE = "user"
# Anyone who may report on a type whose `reporters` list holds this.
ANY_REPORTER = "*"


class Action(StrEnum):
    """An operation on tasks, as the rules name it."""

    CREATE = "create"
    READ = "read"  # get, logs, events, download (and which rows list shows)
    CANCEL = "cancel"
    RETRY = "retry"
    RETRY_FAILED_ROWS = "retry_failed_rows"
    DELETE = "delete"
    REPORT_PROGRESS = "report_progress"


class Scope(Enum):
    """Which tasks a role may apply an action to."""

    NONE = "none"
    OWN = "own"  # tasks that are mine
    OWN_OR_REPORTED = "own_or_reported"  # mine, or of a type I report on
    REPORTED = "reported"  # of a type I report on
    ALL = "all"


_ALL, _OWN, _MINE_OR_REP, _REP, _NONE = (
    Scope.ALL,
    Scope.OWN,
    Scope.OWN_OR_REPORTED,
    Scope.REPORTED,
    Scope.NONE,
)

# The table above, as data: role → action → scope. CREATE's scope is about ``requestedBy``: ALL
# means it may name anyone, OWN only the caller.
RULES: Mapping[str, Mapping[Action, Scope]] = {
    ADMIN_ROLE: dict.fromkeys(Action, _ALL),
    OPERATOR_ROLE: {
        Action.CREATE: _OWN,
        Action.READ: _ALL,
        Action.CANCEL: _ALL,
        Action.RETRY: _ALL,
        Action.RETRY_FAILED_ROWS: _ALL,
        Action.DELETE: _OWN,
        Action.REPORT_PROGRESS: _NONE,
    },
    SERVICE_ROLE: {
        Action.CREATE: _ALL,
        Action.READ: _MINE_OR_REP,
        Action.CANCEL: _OWN,
        Action.RETRY: _OWN,
        Action.RETRY_FAILED_ROWS: _OWN,
        Action.DELETE: _OWN,
        Action.REPORT_PROGRESS: _REP,
    },
    VIEWER_ROLE: {
        Action.CREATE: _NONE,
        Action.READ: _OWN,
        Action.CANCEL: _NONE,
        Action.RETRY: _NONE,
        Action.RETRY_FAILED_ROWS: _NONE,
        Action.DELETE: _NONE,
        Action.REPORT_PROGRESS: _NONE,
    },
    USER_ROLE: {
        Action.CREATE: _OWN,
        Action.READ: _OWN,
        Action.CANCEL: _OWN,
        Action.RETRY: _OWN,
        Action.RETRY_FAILED_ROWS: _OWN,
        Action.DELETE: _OWN,
        Action.REPORT_PROGRESS: _NONE,
    },
}

_NOT_A_REPORTER = "an end user can never complete a task with a report"


def effective_roles(principal: Principal) -> frozenset[str]:
    """The roles of :data:`RULES` that ``principal`` acts with (``user`` when it holds none).

    The anonymous caller of a public route has none at all: it may do nothing with tasks.
    """
    if principal.via == "anonymous":
        return frozenset()
    known = frozenset(r for r in principal.roles if r in RULES and r != USER_ROLE)
    return known or frozenset({USER_ROLE})


def is_mine(principal: Principal, task: Task) -> bool:
    """Whether ``task`` was requested by or created by ``principal``."""
    return principal.subject in (task.requested_by, task.created_by)


def may_report_on(principal: Principal, reporters: Collection[str]) -> bool:
    """Whether ``principal`` is a reporter of a task type whose ``reporters`` list is given.

    Admins always are; otherwise only a ``service`` principal named in the list (or any service
    when it holds ``"*"``).
    """
    roles = effective_roles(principal)
    if ADMIN_ROLE in roles:
        return True
    return SERVICE_ROLE in roles and _named(principal, reporters)


def _named(principal: Principal, reporters: Collection[str]) -> bool:
    return principal.subject in reporters or ANY_REPORTER in reporters


def reportable_types(
    principal: Principal, reporters_by_type: Mapping[str, Collection[str]]
) -> frozenset[str]:
    """The task types ``principal`` reports on (for admins: every configured type)."""
    return frozenset(t for t, reporters in reporters_by_type.items() if may_report_on(principal, reporters))


def _in_scope(scope: Scope, principal: Principal, task: Task, reporters: Collection[str]) -> bool:
    if scope is Scope.ALL:
        return True
    if scope is Scope.NONE:
        return False
    # Only the service role's row holds the REPORTED scopes, so being named is enough here.
    if scope is Scope.OWN:
        return is_mine(principal, task)
    if scope is Scope.REPORTED:
        return _named(principal, reporters)
    return is_mine(principal, task) or _named(principal, reporters)


def allowed(principal: Principal, action: Action, task: Task, reporters: Collection[str] = ()) -> bool:
    """Whether any of ``principal``'s roles lets it apply ``action`` to ``task``.

    Args:
        principal: the caller.
        action: what it asks for (not CREATE: see :func:`authorize_create`).
        task: the task as stored.
        reporters: the ``reporters`` list of the task's type.
    """
    return any(
        _in_scope(RULES[role][action], principal, task, reporters) for role in effective_roles(principal)
    )


def can_see(principal: Principal, task: Task, reporters: Collection[str] = ()) -> bool:
    """Whether ``principal`` may read ``task`` (else it is answered as not found)."""
    return allowed(principal, Action.READ, task, reporters)


def hidden(task_id: uuid.UUID) -> TaskNotFound:
    """The error of a task the caller may not see: the very one a missing task gets."""
    return TaskNotFound(f"task {task_id} not found", id=str(task_id))


def authorize(principal: Principal, action: Action, task: Task, *, reporters: Collection[str] = ()) -> None:
    """Refuse ``action`` on ``task`` unless the table allows it.

    Args:
        principal: the caller.
        action: what it asks for (not CREATE).
        task: the task as stored.
        reporters: the ``reporters`` list of the task's type.

    Raises:
        Unauthenticated: the caller is anonymous.
        TaskNotFound: the caller may not even read the task (same error as a missing id).
        PermissionDenied: it may read the task, but not do this.
    """
    require_credentials(principal)
    if not can_see(principal, task, reporters):
        raise hidden(task.id)
    if allowed(principal, action, task, reporters):
        return
    if action is Action.REPORT_PROGRESS:
        raise PermissionDenied(
            f"{principal.subject} may not report progress on {task.task_type} tasks: only the "
            f"services configured as its reporters may; {_NOT_A_REPORTER}",
            task_type=task.task_type,
        )
    roles = ", ".join(sorted(effective_roles(principal)))
    raise PermissionDenied(
        f"{action.value.replace('_', ' ')} of task {task.id} is not allowed for {principal.subject} "
        f"(roles: {roles}); it is not the caller's own task or the role does not allow it",
        action=action.value,
    )


@dataclass(frozen=True, slots=True)
class Creation:
    """Who a new task is for (``requested_by``) and who created it (``created_by``)."""

    requested_by: str
    created_by: str

    @property
    def on_behalf(self) -> bool:
        """Whether the creator acts for someone else (recorded as ``onBehalfOf``)."""
        return self.requested_by != self.created_by


def authorize_create(principal: Principal, requested_by: str | None, *, admin_only: bool = False) -> Creation:
    """Decide whether ``principal`` may create a task for ``requested_by`` (None/empty: itself).

    Args:
        principal: the caller.
        requested_by: who the task is for, as validated (None or empty: the caller).
        admin_only: the task type acts on every principal's tasks (``retention`` deletes them), so
            only an admin may create one.

    Raises:
        Unauthenticated: the caller is anonymous.
        PermissionDenied: it may not create tasks (viewer), not of this type, or may not name
            someone else.
    """
    require_credentials(principal)
    creation = Creation(requested_by=requested_by or principal.subject, created_by=principal.subject)
    roles = effective_roles(principal)
    if admin_only and ADMIN_ROLE not in roles:
        raise PermissionDenied(
            f"this task type acts on every principal's tasks: it needs the {ADMIN_ROLE} role"
        )
    scopes = {RULES[role][Action.CREATE] for role in roles}
    if Scope.ALL in scopes or (Scope.OWN in scopes and not creation.on_behalf):
        return creation
    if Scope.OWN in scopes:
        raise PermissionDenied(
            f"{principal.subject} may create tasks only for itself: requestedBy must be empty or "
            f"{principal.subject!r}; only a service acting for a user may name another requester",
            field="requestedBy",
        )
    raise PermissionDenied(f"{principal.subject} may not create tasks (read-only role)")


@dataclass(frozen=True, slots=True)
class ListScope:
    """Which tasks ListTasks may return: all, or those of ``subject`` (and of ``task_types``)."""

    everything: bool
    subject: str | None = None
    task_types: frozenset[str] = frozenset()


def visibility(principal: Principal, reporter_types: Collection[str] = ()) -> ListScope:
    """The tasks ``principal`` may list, the same as it may read one by one.

    Args:
        principal: the caller.
        reporter_types: the task types it reports on (:func:`reportable_types`).
    """
    roles = effective_roles(principal)
    scopes = {RULES[role][Action.READ] for role in roles}
    if Scope.ALL in scopes:
        return ListScope(everything=True)
    if not scopes or scopes == {Scope.NONE}:
        # Nobody's tasks: a subject no task can carry (requested_by is never empty).
        return ListScope(everything=False, subject="")
    types = (
        frozenset(reporter_types)
        if Scope.OWN_OR_REPORTED in scopes or Scope.REPORTED in scopes
        else frozenset()
    )
    return ListScope(everything=False, subject=principal.subject, task_types=types)


def may_read_settings(principal: Principal) -> bool:
    """Whether ``principal`` may read a settings group's every key (admins and operators)."""
    return bool(effective_roles(principal) & {ADMIN_ROLE, OPERATOR_ROLE})


def require_settings_reader(principal: Principal, what: str) -> None:
    """Refuse reading ``what`` (a settings group) to a caller that is neither admin nor operator.

    Raises:
        PermissionDenied: the caller has neither role.
    """
    if not may_read_settings(principal):
        raise PermissionDenied(f"reading {what} needs the {ADMIN_ROLE} or {OPERATOR_ROLE} role")


def authorize_bulk_action(principal: Principal) -> None:
    """Refuse a bulk action (cancel or retry by filter) to anyone but an admin or an operator.

    Raises:
        Unauthenticated: the caller is anonymous.
        PermissionDenied: the caller has neither role.
    """
    require_credentials(principal)
    if not effective_roles(principal) & {ADMIN_ROLE, OPERATOR_ROLE}:
        raise PermissionDenied(
            f"bulk actions reach other principals' tasks: they need the {ADMIN_ROLE} or "
            f"{OPERATOR_ROLE} role ({principal.subject} has neither)"
        )
