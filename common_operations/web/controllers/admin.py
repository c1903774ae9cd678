"""Admin endpoints (``/api/v1/admin``): the audit log.

Authorisation and validation are the service's (:class:`AuditService`: admin role, filters); this
module decodes the query and encodes the page.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from litestar import Controller, get
from litestar.datastructures import State
from litestar.params import QueryParameter

from common_operations.db.audit_repository import AuditRecord
from common_operations.services.audit import (
    DEFAULT_AUDIT_PAGE_SIZE,
    MAX_AUDIT_PAGE_SIZE,
    AuditService,
)
from common_operations.web.dependencies import Call
from common_operations.web.errors import problem_responses
from common_operations.web.schemas import Schema


class AuditEntryOut(Schema):
    """One audit log entry: who did what to which entity, its state before and after."""

    id: int
    actor: str
    actor_roles: list[str]
    action: str
    entity_type: str
    entity_id: str
    old_state: Any
    new_state: Any
    metadata: dict[str, Any]
    created_at: datetime


class AuditLogResponse(Schema):
    """One page of audit entries, newest first, and how many match in all."""

    items: list[AuditEntryOut]
    total: int
    page: int
    page_size: int


def _entry_out(record: AuditRecord) -> AuditEntryOut:
    return AuditEntryOut(
        id=record.id,
        actor=record.actor,
        actor_roles=record.actor_roles,
        action=record.action,
        entity_type=record.entity_type,
        entity_id=record.entity_id,
        old_state=record.old_state,
        new_state=record.new_state,
        metadata=record.metadata,
        created_at=record.created_at,
    )


class AdminController(Controller):
    """What only admins see: the append-only audit log."""

    path = "/api/v1/admin"
    tags = ["Admin"]  # noqa: RUF012 - Litestar reads this class attribute as is

    @get(
        "/audit",
        operation_id="ListAuditEntries",
        summary="Page through the admin audit log, newest first",
        responses=problem_responses(400, 401, 403, 429, 503),
    )
    async def list_audit_entries(
        self,
        call: Call,
        state: State,
        actor: Annotated[str | None, QueryParameter(description="only entries of this principal")] = None,
        action: Annotated[
            str | None,
            QueryParameter(description="only this action, e.g. task.delete, settings.update, api_key.create"),
        ] = None,
        entity_type: Annotated[
            str | None,
            QueryParameter(name="entityType", description="task, api_key, settings or message"),
        ] = None,
        entity_id: Annotated[
            str | None,
            QueryParameter(name="entityId", description="one entity's entries (needs entityType)"),
        ] = None,
        before: Annotated[
            int | None,
            QueryParameter(description="only entries with a smaller id: the last id of the page before"),
        ] = None,
        page: Annotated[int, QueryParameter(description="1-based page number")] = 1,
        page_size: Annotated[
            int,
            QueryParameter(name="pageSize", description=f"entries per page (at most {MAX_AUDIT_PAGE_SIZE})"),
        ] = DEFAULT_AUDIT_PAGE_SIZE,
    ) -> AuditLogResponse:
        """Admin role: every delete, cancel or retry of another's task, API key and settings change.

        Also every message change; each with the actor, its roles, and the entity before and after
        (secret settings masked).

        Filter by ``actor`` or by ``entityType`` (+ ``entityId``), and by ``action``. Paging: ``page``
        and ``pageSize`` with ``total``; for a stable walk while entries are being added, pass the last
        ``id`` of a page as ``before`` (with ``page=1``) to get the next one.
        """
        runtime = state.runtime
        found = await AuditService(runtime.audit, runtime.tasks.limits).page(
            call.principal,
            actor=actor,
            action=action,
            entity_type=entity_type,
            entity_id=entity_id,
            before=before,
            page=page,
            page_size=page_size,
        )
        return AuditLogResponse(
            items=[_entry_out(r) for r in found.items],
            total=found.total,
            page=found.page,
            page_size=found.page_size,
        )
