"""Rate limits per principal and operation, and the cap on an owner's unfinished tasks.

Buckets (``limits.rates``): one per principal and operation, and for ``progress`` one per principal
and task, so a chatty worker of one task does not starve the reports of another. They live in Redis
(shared by every replica; see :mod:`common_operations.infra.rate_limit`) and in this process while
Redis is down. Principals holding one of ``limits.exempt_roles``, and this service's own jobs
(``via="internal"``: retention, the CLI), are never limited.

The unfinished-task cap counts the owner's (``requestedBy``) tasks that are not finished yet. It is
checked before the insert, not in the same transaction: two creates of one owner racing at the cap
may both pass, so an owner can overshoot by the number of its creates in flight at once. The cap
guards against a runaway producer, not an exact quota, and a row lock per owner on every create
would cost more than that overshoot.
"""

from __future__ import annotations

from typing import Final, Protocol
from urllib.parse import quote

from common_operations.config import LimitSettings, RateLimit
from common_operations.domain.errors import QuotaExceeded, RateLimited
from common_operations.domain.principal import Principal
from common_operations.infra.rate_limit import Bucket, RateLimiter

# What a refused create tells the client to wait: tasks finish at their own pace, so this is a hint
# to come back later, not a promise.
QUOTA_RETRY_AFTER: Final = 30.0
# Operations with a bucket per principal and scope (the task), not per principal alone.
SCOPED_OPERATIONS: Final = frozenset({"progress"})


class UnfinishedTasks(Protocol):
    """Counts an owner's tasks that are not finished (the task repository)."""

    async def count_unfinished(self, owner: str, *, at_most: int | None = None) -> int:
        """Tasks of ``owner`` not finished yet, counted up to ``at_most``."""
        ...


class TaskLimits:
    """What a caller may still do right now.

    ``TaskLimits()`` limits nothing (services built without limits, most tests).
    """

    def __init__(
        self,
        settings: LimitSettings | None = None,
        *,
        limiter: RateLimiter | None = None,
        tasks: UnfinishedTasks | None = None,
    ) -> None:
        """Enforce ``settings`` (None: no limits at all).

        Args:
            settings: the ``limits`` section.
            limiter: the token buckets (default: in-process only, i.e. per replica).
            tasks: counts unfinished tasks for the cap (None: no cap).
        """
        self.settings = settings or LimitSettings(enabled=False, max_unfinished_tasks=None)
        self._limiter = limiter or RateLimiter(None)
        self._tasks = tasks
        self._exempt = frozenset(self.settings.exempt_roles)

    def _applies_to(self, principal: Principal) -> bool:
        return (
            self.settings.enabled
            and principal.via != "internal"
            and not (self._exempt and principal.roles & self._exempt)
        )

    async def check(self, principal: Principal, operation: str, scope: str = "") -> None:
        """Take one token of ``principal``'s bucket for ``operation`` (and ``scope``, e.g. a task id).

        Operations: ``create``, ``progress`` (scope: the task), ``read``, ``change`` (cancel, retry,
        delete, retry-failed-rows), ``admin`` (the admin endpoints, settings and messages writes).
        An operation without a configured rate is not limited.

        Raises:
            RateLimited: the bucket is empty; ``retry_after`` says when a token is back.
        """
        rate = self.settings.rates.get(operation)
        if rate is None or not self._applies_to(principal):
            return
        key = f"{operation}:{quote(principal.subject, safe='')}"
        if operation in SCOPED_OPERATIONS and scope:
            key += f":{quote(scope, safe='')}"
        decision = await self._limiter.take(key, Bucket(rate.requests, rate.per_seconds))
        if not decision.allowed:
            raise RateLimited(
                _refusal(principal.subject, operation, rate, decision.retry_after, scoped=bool(scope)),
                retry_after=decision.retry_after,
                operation=operation,
                limit=rate.requests,
                perSeconds=rate.per_seconds,
            )

    async def check_unfinished(self, principal: Principal, owner: str) -> None:
        """Refuse a new task for ``owner`` (its requestedBy) when it has too many unfinished ones.

        Unfinished: pending, scheduled, processing, or failed with an automatic retry to come.

        Raises:
            QuotaExceeded: ``owner`` has ``limits.max_unfinished_tasks`` tasks not yet finished.
        """
        cap = self.settings.max_unfinished_tasks
        if cap is None or self._tasks is None or not self._applies_to(principal):
            return
        count = await self._tasks.count_unfinished(owner, at_most=cap)
        if count >= cap:
            raise QuotaExceeded(
                f"{owner!r} has {count} unfinished tasks, the most allowed (limits.max_unfinished_tasks"
                f" = {cap}); wait until some finish, or cancel some, then create the task again",
                retry_after=QUOTA_RETRY_AFTER,
                owner=owner,
                unfinished=count,
                limit=cap,
            )


def _refusal(subject: str, operation: str, rate: RateLimit, retry_after: float, *, scoped: bool) -> str:
    what = f"{operation} requests from {subject!r}" + (" for this task" if scoped else "")
    return (
        f"too many {what}: at most {rate.requests} per {rate.per_seconds:g} s; retry in {retry_after:.1f} s"
    )
