"""Rate limits per principal and operation, and the cap on a principal's unfinished tasks.

(Issue 8: the interface the task service calls; the Redis token buckets are being built.)
"""

from __future__ import annotations

from common_operations.domain.principal import Principal


class TaskLimits:
    """What a caller may still do right now."""

    async def check(self, principal: Principal, operation: str, scope: str = "") -> None:
        """Take one token of ``principal``'s bucket for ``operation`` (and ``scope``, e.g. a task id).

        Operations: ``create``, ``progress`` (scope: the task), ``read``, ``change`` (cancel, retry,
        delete, retry-failed-rows), ``admin``.

        Raises:
            RateLimited: the bucket is empty; ``retry_after`` says when a token is back.
        """

    async def check_unfinished(self, principal: Principal, owner: str) -> None:
        """Refuse a new task for ``owner`` (its requestedBy) when it has too many unfinished ones.

        Raises:
            QuotaExceeded: ``owner`` has ``limits.max_unfinished_tasks`` tasks not yet finished.
        """
