"""Reading the admin audit log (admins only); entries are written by the actions they record.

There is deliberately no use case that changes or removes an entry: the log is append-only in the
service and at the database (triggers refuse UPDATE, DELETE and TRUNCATE).
"""

from __future__ import annotations

from typing import Final

from common_operations.db.audit_repository import AuditLog, AuditQuery, AuditRecord
from common_operations.domain.errors import ValidationFailed
from common_operations.domain.principal import Principal, require_admin
from common_operations.domain.task import Page, validate_paging
from common_operations.services.limits import TaskLimits

DEFAULT_AUDIT_PAGE_SIZE: Final = 50
MAX_AUDIT_PAGE_SIZE: Final = 1000
# The columns' lengths (admin_audit_log): a longer filter cannot match anything, so it is a 400.
MAX_ACTOR_LENGTH: Final = 255
MAX_ACTION_LENGTH: Final = 100
MAX_ENTITY_TYPE_LENGTH: Final = 100
MAX_ENTITY_ID_LENGTH: Final = 255
MAX_ENTRY_ID: Final = 2**63 - 1  # bigserial


def _text(value: str | None, name: str, limit: int) -> str | None:
    """A filter as given; empty means no filter."""
    if value is None or value == "":
        return None
    if len(value) > limit:
        raise ValidationFailed(f"{name} must be at most {limit} characters", field=name)
    if "\x00" in value:
        raise ValidationFailed(f"{name} must not contain NUL characters", field=name)
    return value


def validate_audit_query(
    *,
    actor: str | None = None,
    action: str | None = None,
    entity_type: str | None = None,
    entity_id: str | None = None,
    before: int | None = None,
    page: int = 1,
    page_size: int = DEFAULT_AUDIT_PAGE_SIZE,
) -> AuditQuery:
    """The audit log query the filters describe.

    Raises:
        ValidationFailed: a filter too long or holding NUL, ``entityId`` without ``entityType``,
            ``before`` out of range, or bad paging (each named in ``field``).
    """
    validate_paging(page, page_size, MAX_AUDIT_PAGE_SIZE)
    entity_type = _text(entity_type, "entityType", MAX_ENTITY_TYPE_LENGTH)
    entity_id = _text(entity_id, "entityId", MAX_ENTITY_ID_LENGTH)
    if entity_id is not None and entity_type is None:
        raise ValidationFailed(
            "entityId needs entityType (e.g. entityType=task&entityId=<task id>)", field="entityId"
        )
    if before is not None and not 1 <= before <= MAX_ENTRY_ID:
        raise ValidationFailed(f"before must be between 1 and {MAX_ENTRY_ID}", field="before")
    return AuditQuery(
        actor=_text(actor, "actor", MAX_ACTOR_LENGTH),
        action=_text(action, "action", MAX_ACTION_LENGTH),
        entity_type=entity_type,
        entity_id=entity_id,
        before=before,
        page=page,
        page_size=page_size,
    )


class AuditService:
    """The admin audit log's read side."""

    def __init__(self, log: AuditLog, limits: TaskLimits | None = None) -> None:
        """Read ``log``; each read takes a token of the caller's ``admin`` bucket in ``limits``."""
        self._log = log
        self._limits = limits or TaskLimits()

    async def page(
        self,
        principal: Principal,
        *,
        actor: str | None = None,
        action: str | None = None,
        entity_type: str | None = None,
        entity_id: str | None = None,
        before: int | None = None,
        page: int = 1,
        page_size: int = DEFAULT_AUDIT_PAGE_SIZE,
    ) -> Page[AuditRecord]:
        """Entries matching the filters (see :func:`validate_audit_query`), newest first (admins only).

        The caller is checked before its filters, so a non-admin learns nothing from a 400.

        Raises:
            PermissionDenied: the caller is not an admin.
            RateLimited: the caller's ``admin`` bucket is empty.
            ValidationFailed: a bad filter or bad paging.
        """
        require_admin(principal, "reading the audit log")
        await self._limits.check(principal, "admin")
        query = validate_audit_query(
            actor=actor,
            action=action,
            entity_type=entity_type,
            entity_id=entity_id,
            before=before,
            page=page,
            page_size=page_size,
        )
        return await self._log.page(query)
