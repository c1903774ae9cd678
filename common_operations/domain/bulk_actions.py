"""Bulk actions: cancel or retry every task matching a filter, as one task that can be watched.

Pure rules, no I/O. A bulk action is itself a task of the built-in ``bulk_action`` type: its params
hold the action and the filter (what the operator asked for), and its workflow runs an activity that
pages through the matching tasks and cancels or retries each one through the task service, as the
operator who asked (so the role table, the audit log and the rate limits apply to every task).

Only admins and operators may start one: a bulk action reaches other principals' tasks, which only
those roles may cancel or retry (``domain.authorization``).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime
from enum import StrEnum
from typing import Any

from common_operations.domain.errors import ValidationFailed
from common_operations.domain.status import TaskStatus
from common_operations.domain.task import (
    MAX_REASON_LENGTH,
    TaskQuery,
    parse_cancel_reason,
    validate_query,
)

# The audit action that records who asked for a bulk action, with the roles it acts with.
BULK_ACTION_AUDIT = "task.bulk_action"
# Tasks examined per page of the job (one ListTasks page as the actor).
PAGE_SIZE = 100
# Room left in a cancellation's reason for "bulk action <task id>: " in front of the operator's.
MAX_BULK_REASON_LENGTH = MAX_REASON_LENGTH - 100


class BulkActionKind(StrEnum):
    """What a bulk action does to each matching task."""

    CANCEL = "cancel"
    RETRY = "retry"


# The statuses each action can change; a filter without a status takes all of them.
ACTIONABLE: dict[BulkActionKind, tuple[TaskStatus, ...]] = {
    BulkActionKind.CANCEL: (TaskStatus.SCHEDULED, TaskStatus.PENDING, TaskStatus.PROCESSING),
    BulkActionKind.RETRY: (TaskStatus.FAILED,),
}


@dataclass(frozen=True, slots=True)
class BulkFilter:
    """Which tasks a bulk action reaches: the ListTasks filters (``since``/``until``: created at)."""

    task_type: str | None = None
    entity_type: str | None = None
    status: TaskStatus | None = None
    requested_by: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    search: str | None = None

    def query(self, status: TaskStatus, *, until: datetime | None, page_size: int = PAGE_SIZE) -> TaskQuery:
        """The ListTasks query of one status, created no later than ``until`` (the job's cursor)."""
        return TaskQuery(
            page=1,
            page_size=page_size,
            task_type=self.task_type,
            entity_type=self.entity_type,
            status=status,
            requested_by=self.requested_by,
            start_date=self.since,
            end_date=until,
            search=self.search,
        )

    def to_params(self) -> dict[str, Any]:
        """The filter as the bulk task's params show it (lowerCamelCase, set members only)."""
        values = {
            "taskType": self.task_type,
            "entityType": self.entity_type,
            "status": self.status.value if self.status else None,
            "requestedBy": self.requested_by,
            "since": self.since.isoformat() if self.since else None,
            "until": self.until.isoformat() if self.until else None,
            "search": self.search,
        }
        return {k: v for k, v in values.items() if v is not None}


@dataclass(frozen=True, slots=True)
class BulkAction:
    """A validated bulk action: what to do, to which tasks, and the reason recorded with each."""

    action: BulkActionKind
    filter: BulkFilter
    reason: str | None = None

    @property
    def statuses(self) -> tuple[TaskStatus, ...]:
        """The statuses the job pages through, in order."""
        return (self.filter.status,) if self.filter.status else ACTIONABLE[self.action]

    def to_params(self) -> dict[str, Any]:
        """The bulk task's params: ``{"action", "filter", "reason"?}``."""
        params: dict[str, Any] = {"action": self.action.value, "filter": self.filter.to_params()}
        if self.reason:
            params["reason"] = self.reason
        return params

    def describe(self) -> str:
        """A one-line summary for logs and the task's messages, e.g. ``cancel pending process tasks``."""
        f = self.filter
        words = [self.action.value]
        words.append("/".join(s.value for s in self.statuses))
        words.append(f"{f.task_type} tasks" if f.task_type else "tasks")
        if f.entity_type:
            words.append(f"of entity {f.entity_type}")
        if f.requested_by:
            words.append(f"requested by {f.requested_by}")
        if f.since:
            words.append(f"created since {f.since.isoformat()}")
        if f.until:
            words.append(f"created until {f.until.isoformat()}")
        if f.search:
            words.append(f"matching {f.search!r}")
        return " ".join(words)


def parse_action(raw: str | None) -> BulkActionKind:
    """``cancel`` or ``retry``.

    Raises:
        ValidationFailed: anything else (the message lists the actions).
    """
    try:
        return BulkActionKind((raw or "").strip().lower())
    except ValueError:
        allowed = ", ".join(k.value for k in BulkActionKind)
        raise ValidationFailed(f"unknown action {raw!r}; allowed: {allowed}", field="action") from None


def validate_bulk_action(action: BulkAction) -> BulkAction:
    """Check a bulk action before anything is started.

    The filter must name a task type or a requester (so a bulk action never sweeps every task of
    every type by accident), its status must be one the action can change, and its fields obey the
    ListTasks limits.

    Raises:
        ValidationFailed: naming the offending field.

    Returns:
        The action with its text fields trimmed (empty means absent).
    """
    f = action.filter

    def clean(text: str | None) -> str | None:
        return text.strip() or None if text is not None else None

    f = replace(
        f,
        task_type=clean(f.task_type),
        entity_type=clean(f.entity_type),
        requested_by=clean(f.requested_by),
        search=clean(f.search),
    )
    if f.task_type is None and f.requested_by is None:
        raise ValidationFailed(
            "a bulk action needs filter.taskType or filter.requestedBy (or both), so that it never "
            "reaches every task of every type by accident",
            field="filter.taskType",
        )
    allowed = ACTIONABLE[action.action]
    if f.status is not None and f.status not in allowed:
        raise ValidationFailed(
            f"a bulk {action.action.value} changes only {', '.join(s.value for s in allowed)} tasks, "
            f"not {f.status.value} ones",
            field="filter.status",
        )
    for name, value in (("filter.since", f.since), ("filter.until", f.until)):
        if value is not None and value.tzinfo is None:
            raise ValidationFailed(f"{name} needs a time zone (RFC 3339)", field=name)
    try:
        validate_query(f.query(allowed[0], until=f.until))
    except ValidationFailed as err:
        # ListTasks names its own fields (startDate, endDate): say which filter member it is.
        field = {"startDate": "filter.since", "endDate": "filter.until"}.get(
            str(err.details.get("field")), f"filter.{err.details.get('field')}"
        )
        message = err.message.replace("startDate", "since").replace("endDate", "until")
        raise ValidationFailed(message, field=field) from None
    reason = parse_cancel_reason(action.reason)
    if reason is not None and len(reason) > MAX_BULK_REASON_LENGTH:
        # Each cancelled task records "bulk action <id>: <reason>" within MAX_REASON_LENGTH.
        raise ValidationFailed(f"reason is longer than {MAX_BULK_REASON_LENGTH} characters", field="reason")
    return BulkAction(action=action.action, filter=f, reason=reason)


def bulk_action_from_params(params: dict[str, Any]) -> BulkAction:
    """The bulk action a ``bulk_action`` task's params describe (the inverse of ``to_params``).

    Raises:
        ValidationFailed: the params are not a bulk action's (a task made by hand through CreateTask).
    """
    raw = params.get("filter")
    if not isinstance(raw, dict):
        raise ValidationFailed("params.filter must be an object", field="params.filter")

    def text(name: str) -> str | None:
        value = raw.get(name)
        if value is not None and not isinstance(value, str):
            raise ValidationFailed(f"params.filter.{name} must be a string", field=f"params.filter.{name}")
        return value

    def instant(name: str) -> datetime | None:
        value = text(name)
        if value is None:
            return None
        try:
            return datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise ValidationFailed(
                f"params.filter.{name} is not an RFC 3339 instant", field=f"params.filter.{name}"
            ) from None

    status = text("status")
    try:
        parsed_status = TaskStatus(status) if status else None
    except ValueError:
        raise ValidationFailed(f"unknown status {status!r}", field="params.filter.status") from None
    reason = params.get("reason")
    return validate_bulk_action(
        BulkAction(
            action=parse_action(params.get("action") if isinstance(params.get("action"), str) else None),
            filter=BulkFilter(
                task_type=text("taskType"),
                entity_type=text("entityType"),
                status=parsed_status,
                requested_by=text("requestedBy"),
                since=instant("since"),
                until=instant("until"),
                search=text("search"),
            ),
            reason=reason if isinstance(reason, str) else None,
        )
    )
