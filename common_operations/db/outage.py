"""Telling "Postgres is unreachable right now" from a bug, for the transports' error mapping."""

from __future__ import annotations

import asyncpg

from common_operations.domain.errors import ServiceUnavailable

# Connection-level failures: the server restarts, refuses connections while starting, or a pooled
# connection died. The request can be sent again; nothing about it was wrong.
_OUTAGES: tuple[type[BaseException], ...] = (
    asyncpg.PostgresConnectionError,
    asyncpg.CannotConnectNowError,
    asyncpg.ConnectionDoesNotExistError,
    asyncpg.InterfaceError,
    asyncpg.AdminShutdownError,
    ConnectionError,
    OSError,
)


def as_outage(exc: BaseException) -> ServiceUnavailable | None:
    """A 503 for an unreachable database, or None when ``exc`` is something else (a bug: 500)."""
    if isinstance(exc, _OUTAGES):
        return ServiceUnavailable(f"the database is unavailable ({type(exc).__name__}); try again shortly")
    return None
