"""Task statuses and the one place where transitions are decided."""

from __future__ import annotations

from enum import StrEnum

from common_operations.domain.errors import InvalidTransition, RetryLimitExceeded, ValidationFailed


class TaskStatus(StrEnum):
    """Lifecycle states of a task (seed names)."""

    PENDING = "pending"
    SCHEDULED = "scheduled"
    PROCESSING = "processing"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def is_final(self) -> bool:
        """``completed`` and ``cancelled`` never change again."""
        return self in FINAL_STATUSES

    @property
    def is_active(self) -> bool:
        """A workflow run is (or should be) working on the task."""
        return self in ACTIVE_STATUSES

    @property
    def is_closed(self) -> bool:
        """No run is working on the task (final or failed)."""
        return not self.is_active


FINAL_STATUSES = frozenset({TaskStatus.COMPLETED, TaskStatus.CANCELLED})
ACTIVE_STATUSES = frozenset({TaskStatus.PENDING, TaskStatus.SCHEDULED, TaskStatus.PROCESSING})

_ALLOWED: dict[TaskStatus, frozenset[TaskStatus]] = {
    TaskStatus.SCHEDULED: frozenset({TaskStatus.PENDING, TaskStatus.CANCELLED, TaskStatus.FAILED}),
    TaskStatus.PENDING: frozenset(
        {TaskStatus.PROCESSING, TaskStatus.CANCELLED, TaskStatus.FAILED, TaskStatus.COMPLETED}
    ),
    TaskStatus.PROCESSING: frozenset({TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.CANCELLED}),
    # failed -> cancelled only while the workflow waits to retry the task by itself (auto_retry).
    TaskStatus.FAILED: frozenset({TaskStatus.PENDING, TaskStatus.CANCELLED}),
    TaskStatus.COMPLETED: frozenset(),
    TaskStatus.CANCELLED: frozenset(),
}


def parse_status(raw: str | None) -> TaskStatus | None:
    """A status filter as clients send it; empty means no filter.

    Raises:
        ValidationFailed: not one of the task statuses (the message lists them).
    """
    if raw is None or not raw.strip():
        return None
    try:
        return TaskStatus(raw.strip().lower())
    except ValueError as exc:
        allowed = ", ".join(s.value for s in TaskStatus)
        raise ValidationFailed(f"unknown status {raw!r}; allowed: {allowed}", field="status") from exc


def can_transition(current: TaskStatus, target: TaskStatus) -> bool:
    """Whether ``current -> target`` is an edge of the status machine."""
    return target in _ALLOWED[current]


def ensure_transition(current: TaskStatus, target: TaskStatus) -> None:
    """Raise :class:`InvalidTransition` unless ``current -> target`` is allowed.

    Args:
        current: the task's status now.
        target: the status asked for.

    Raises:
        InvalidTransition: the edge does not exist.
    """
    if not can_transition(current, target):
        raise InvalidTransition(
            f"cannot move a task from {current.value} to {target.value}",
            current=current.value,
            target=target.value,
        )


def ensure_cancellable(current: TaskStatus, *, retry_pending: bool = False) -> None:
    """Scheduled, pending and processing tasks can be cancelled, and failed ones awaiting a retry.

    Raises:
        InvalidTransition: the task is completed, cancelled, or failed with no retry pending.
    """
    if current is TaskStatus.FAILED and not retry_pending:
        raise InvalidTransition(
            "cannot cancel a failed task that is not waiting for an automatic retry", current=current.value
        )
    ensure_transition(current, TaskStatus.CANCELLED)


def ensure_retryable(current: TaskStatus, retry_count: int, max_retries: int) -> None:
    """A task can be retried only from ``failed`` and while retries remain.

    A failed task waiting for an automatic retry can be retried at once (the wait is skipped).

    Raises:
        InvalidTransition: the task is not failed.
        RetryLimitExceeded: ``retry_count >= max_retries``.
    """
    if current is not TaskStatus.FAILED:
        raise InvalidTransition(
            f"only failed tasks can be retried; this one is {current.value}", current=current.value
        )
    if retry_count >= max_retries:
        raise RetryLimitExceeded(
            f"task has been retried {retry_count} of {max_retries} times",
            retry_count=retry_count,
            max_retries=max_retries,
        )


def ensure_accepts_reports(current: TaskStatus) -> None:
    """Progress reports are accepted only while a task is pending or processing.

    Raises:
        InvalidTransition: the task is scheduled, failed or final.
    """
    if current not in (TaskStatus.PENDING, TaskStatus.PROCESSING):
        raise InvalidTransition(
            f"task is {current.value}; progress reports are accepted only while it is pending or processing",
            current=current.value,
        )


def ensure_deletable(current: TaskStatus, *, retry_pending: bool = False) -> None:
    """Tasks that a run is working on (or will retry) cannot be deleted; cancel them first."""
    if current.is_active:
        raise InvalidTransition(
            f"cannot delete a {current.value} task; cancel it first", current=current.value
        )
    if retry_pending:
        raise InvalidTransition(
            "cannot delete a failed task that waits for an automatic retry; cancel it first",
            current=current.value,
        )
