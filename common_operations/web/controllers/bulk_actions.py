"""``POST /api/v1/operations/bulk-actions``: cancel or retry every task matching a filter, as one task.

Decode, call :class:`BulkActionService`, encode. The answer is the bulk action's own task (type
``bulk_action``): watch it like any task (GET, its stream, ``common-operations tasks watch``).
"""

from __future__ import annotations

from datetime import datetime

from litestar import Controller, post
from litestar.params import JSONBody

from common_operations.domain.bulk_actions import BulkAction, BulkFilter, parse_action
from common_operations.domain.status import parse_status
from common_operations.services.bulk_actions import BulkActionService
from common_operations.web import mapping
from common_operations.web.dependencies import Call
from common_operations.web.errors import problem_responses
from common_operations.web.schemas import Schema, TaskResponse


class BulkActionFilter(Schema):
    """Which tasks: the ListTasks filters; ``since``/``until`` bound their creation (RFC 3339).

    ``taskType`` or ``requestedBy`` is required. Without ``status``: every status the action can
    change (cancel: scheduled, pending, processing; retry: failed).
    """

    task_type: str | None = None
    entity_type: str | None = None
    status: str | None = None
    requested_by: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    search: str | None = None


class BulkActionRequest(Schema):
    """Body of ``POST /api/v1/operations/bulk-actions``."""

    action: str
    filter: BulkActionFilter
    reason: str | None = None


class BulkActionController(Controller):
    """Bulk actions by filter (operators and admins)."""

    path = "/api/v1/operations/bulk-actions"
    tags = ["Tasks"]  # noqa: RUF012 - Litestar reads this class attribute as is

    @post(
        "",
        operation_id="CreateBulkAction",
        summary="Cancel or retry every task matching a filter, as one watchable task",
        status_code=201,
        responses=problem_responses(400, 401, 403, 413, 429, 503),
    )
    async def create_bulk_action(self, data: JSONBody[BulkActionRequest], call: Call) -> TaskResponse:
        """Start a bulk action; answers its task (type ``bulk_action``, requested by the caller).

        ``action`` is ``cancel`` or ``retry``. The job acts as the caller on each matching task
        created before the bulk action (the same rules, audit rows and rate limits as one by one) and
        reports its progress: ``totalRecords`` matching tasks, ``successRecords`` changed,
        ``failedRecords`` refused (each refusal is quoted in the final message). Admin or operator
        role only (403 otherwise). ``reason`` (cancel) is recorded with every cancellation.
        """
        f = data.filter
        action = BulkAction(
            action=parse_action(data.action),
            filter=BulkFilter(
                task_type=f.task_type,
                entity_type=f.entity_type,
                status=parse_status(f.status),
                requested_by=f.requested_by,
                since=f.since,
                until=f.until,
                search=f.search,
            ),
            reason=data.reason,
        )
        task = await BulkActionService(call.tasks).start(call.principal, action)
        return mapping.task_response(task)
