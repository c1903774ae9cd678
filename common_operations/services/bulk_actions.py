"""Bulk actions: one ``bulk_action`` task that cancels or retries every task matching a filter.

The service decides who may start one (admins and operators, ``domain.bulk_actions``), creates the
task through :class:`TaskService` (so rate limits, the unfinished-task cap and the ``task.created``
event apply as to any task) and records in the audit log who asked, with the roles they hold. The
task's activity acts as exactly that principal, read back from the audit row: the actor is never
taken from the task's params, which anyone creating a ``bulk_action`` task by hand could write.
"""

from __future__ import annotations

import logging
import uuid

from common_operations.db.audit_repository import AuditEntry, AuditQuery
from common_operations.domain.authorization import authorize_bulk_action
from common_operations.domain.bulk_actions import (
    BULK_ACTION_AUDIT,
    BulkAction,
    validate_bulk_action,
)
from common_operations.domain.errors import ServiceUnavailable
from common_operations.domain.principal import Principal
from common_operations.domain.task import CreateTask, Task
from common_operations.domain.workflow_types import BULK_ACTION_TASK_TYPE, HandlerKind
from common_operations.services.tasks import TaskService

log = logging.getLogger(__name__)


class BulkActionService:
    """Starts bulk actions and tells their job who asked for them."""

    def __init__(self, tasks: TaskService) -> None:
        """Work through ``tasks`` (its settings name the ``bulk_action`` type, its audit log the actor)."""
        self._tasks = tasks

    def task_type(self) -> str:
        """The configured task type of kind ``bulk_action`` (``bulk_action`` unless renamed).

        Raises:
            ServiceUnavailable: no such type is configured.
        """
        types = self._tasks.settings.task_types
        if BULK_ACTION_TASK_TYPE in types and types[BULK_ACTION_TASK_TYPE].kind is HandlerKind.BULK_ACTION:
            return BULK_ACTION_TASK_TYPE
        for name, spec in types.items():
            if spec.kind is HandlerKind.BULK_ACTION:
                return name
        raise ServiceUnavailable("no task type of kind bulk_action is configured (operations.task_types)")

    async def start(self, principal: Principal, action: BulkAction) -> Task:
        """Validate and authorize ``action``, create its task and record who asked for it.

        The task is the caller's own (``requestedBy`` = the caller) and starts at once; its
        ``task.bulk_action`` audit row holds the filter, the caller and the caller's roles.

        Raises:
            Unauthenticated: the caller is anonymous.
            PermissionDenied: the caller is neither admin nor operator.
            ValidationFailed: a bad action or filter (an unknown ``taskType`` included).
            UnknownTaskType: the filter names a type that is not configured.
            ServiceUnavailable: the audit log is not available, or no bulk_action type is configured.
            RateLimited: the caller's create limit is used up.
        """
        authorize_bulk_action(principal)
        action = validate_bulk_action(action)
        if action.filter.task_type is not None:
            # An unknown type could match no task: say so now rather than run an empty job.
            self._tasks.settings.handler_for(action.filter.task_type)
        audit = self._tasks.audit
        if audit is None:
            raise ServiceUnavailable(
                "bulk actions need the audit log, which is not available in this process"
            )
        task = await self._tasks.create_task(
            principal,
            CreateTask(
                task_type=self.task_type(),
                entity_type="tasks",
                requested_by=principal.subject,
                params=action.to_params(),
            ),
        )
        # The job waits for this row before it acts (it names the actor); written after the task so
        # that it names a task that exists. If it cannot be written, the job fails without acting.
        await audit.record(
            principal,
            AuditEntry(
                action=BULK_ACTION_AUDIT,
                entity_type="task",
                entity_id=str(task.id),
                new_state=action.to_params(),
                metadata={"summary": action.describe()},
            ),
        )
        log.info("bulk action %s by %s: %s", task.id, principal.subject, action.describe())
        return task

    async def actor_of(self, task_id: uuid.UUID, created_by: str | None) -> Principal | None:
        """The principal a bulk action acts as: its ``task.bulk_action`` audit row's actor and roles.

        Args:
            task_id: the bulk action's task.
            created_by: the task's ``createdBy``; the audit row must name the same principal.

        Returns:
            None while (or if) no such row exists: the task was not started by :meth:`start`.
        """
        audit = self._tasks.audit
        if audit is None:
            return None
        found = await audit.page(
            AuditQuery(entity_type="task", entity_id=str(task_id), action=BULK_ACTION_AUDIT, page_size=1)
        )
        if not found.items:
            return None
        entry = found.items[0]
        if created_by is not None and entry.actor != created_by:
            return None
        # "internal": the job acts on its own, long after the request that authorized it.
        return Principal(subject=entry.actor, roles=frozenset(entry.actor_roles), via="internal")
