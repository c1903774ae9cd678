"""Domain errors with stable codes; transports map them to HTTP problems and gRPC statuses."""

from __future__ import annotations

import math
from enum import StrEnum
from typing import Any


class ErrorKind(StrEnum):
    """Transport-neutral category; REST maps it to an HTTP status, gRPC to a status code."""

    INVALID = "invalid"  # 400 / INVALID_ARGUMENT
    NOT_FOUND = "not_found"  # 404 / NOT_FOUND
    CONFLICT = "conflict"  # 409 / FAILED_PRECONDITION
    DUPLICATE = "duplicate"  # 409 / ALREADY_EXISTS
    UNAUTHENTICATED = "unauthenticated"  # 401 + WWW-Authenticate / UNAUTHENTICATED
    FORBIDDEN = "forbidden"  # 403 / PERMISSION_DENIED
    PRECONDITION = "precondition"  # 412 / FAILED_PRECONDITION
    UNAVAILABLE = "unavailable"  # 503 / UNAVAILABLE
    EXHAUSTED = "exhausted"  # 429 + Retry-After / RESOURCE_EXHAUSTED
    TOO_LARGE = "too_large"  # 413 / RESOURCE_EXHAUSTED
    INTERNAL = "internal"  # 500 / INTERNAL


def quoted(value: object, limit: int = 64) -> str:
    """``repr(value)`` for an error message, cut to about ``limit`` characters.

    Messages name the offending input, but must not echo a megabyte of it: gRPC sends the message
    percent-encoded in a trailer, and clients drop an answer whose trailers pass 16 KiB.
    """
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


class DomainError(Exception):
    """Base error carrying a stable machine-readable ``code``."""

    code = "INTERNAL"
    kind = ErrorKind.INTERNAL

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details = details


class ValidationFailed(DomainError):
    """Input is malformed or out of range."""

    code = "VALIDATION_FAILED"
    kind = ErrorKind.INVALID


class UnknownTaskType(ValidationFailed):
    """The task type is not configured."""

    code = "UNKNOWN_TASK_TYPE"


class TaskNotFound(DomainError):
    """No task has the given id."""

    code = "TASK_NOT_FOUND"
    kind = ErrorKind.NOT_FOUND


class InvalidTransition(DomainError):
    """The requested change is not allowed from the task's current status."""

    code = "INVALID_TRANSITION"
    kind = ErrorKind.CONFLICT


class RetryLimitExceeded(InvalidTransition):
    """The task has used all of its retries."""

    code = "RETRY_LIMIT_EXCEEDED"


class ReportLimitReached(InvalidTransition):
    """A delegated task's attempt took as many progress reports as one workflow run may hold."""

    code = "REPORT_LIMIT_REACHED"


class IdempotencyKeyReused(DomainError):
    """The caller's idempotency key was used before with a different request."""

    code = "IDEMPOTENCY_KEY_REUSED"
    kind = ErrorKind.DUPLICATE


class NotAvailable(DomainError):
    """The requested resource does not exist yet (e.g. no output file)."""

    code = "NOT_AVAILABLE"
    kind = ErrorKind.CONFLICT


class PermissionDenied(DomainError):
    """The caller may not perform this action."""

    code = "PERMISSION_DENIED"
    kind = ErrorKind.FORBIDDEN


class Unauthenticated(DomainError):
    """No credentials where they are required, or credentials that do not verify.

    The message says which check failed (expired, wrong audience, unknown key, …) but never echoes
    the credential.
    """

    code = "UNAUTHENTICATED"
    kind = ErrorKind.UNAUTHENTICATED


class PreconditionFailed(DomainError):
    """A conditional change (``If-Match``) named a version that is no longer the current one."""

    code = "PRECONDITION_FAILED"
    kind = ErrorKind.PRECONDITION


class SettingsGroupNotFound(DomainError):
    """No settings group of that name is declared."""

    code = "SETTINGS_GROUP_NOT_FOUND"
    kind = ErrorKind.NOT_FOUND


class MessageNotFound(DomainError):
    """No message template has the given key."""

    code = "MESSAGE_NOT_FOUND"
    kind = ErrorKind.NOT_FOUND


class ServiceUnavailable(DomainError):
    """A backing service (Temporal, Postgres) cannot be reached."""

    code = "SERVICE_UNAVAILABLE"
    kind = ErrorKind.UNAVAILABLE


class RateLimited(DomainError):
    """Too many requests right now; the caller should retry after ``retry_after`` seconds."""

    code = "RATE_LIMITED"
    kind = ErrorKind.EXHAUSTED

    def __init__(self, message: str, *, retry_after: float = 1.0, **details: Any) -> None:
        super().__init__(message, retry_after=retry_after, **details)
        self.retry_after = retry_after

    @property
    def retry_after_seconds(self) -> int:
        """``retry_after`` as the whole seconds both transports announce, rounded up (never negative).

        HTTP's ``Retry-After`` takes whole seconds only; rounding down could send a client back
        before the limit has passed.
        """
        if not math.isfinite(self.retry_after):
            return 1
        return max(0, math.ceil(self.retry_after))


class QuotaExceeded(RateLimited):
    """The owner has as many unfinished tasks as allowed; more once some finish or are cancelled."""

    code = "QUOTA_EXCEEDED"


class PayloadTooLarge(DomainError):
    """A request (or a value in it) is larger than the service accepts."""

    code = "PAYLOAD_TOO_LARGE"
    kind = ErrorKind.TOO_LARGE


class UnknownEntityType(ValidationFailed):
    """A bulk task names an entity type that is not declared in ``configs/entities``."""

    code = "UNKNOWN_ENTITY_TYPE"
