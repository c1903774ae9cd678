"""Telling "Postgres is unreachable right now" from a bug, for the transports' error mapping."""

from __future__ import annotations

import asyncpg

from common_operations.domain.errors import ServiceUnavailable

# What asyncpg raises when Postgres cannot serve at all (down, restarting, out of connections), as
# opposed to a statement's own error: no server on the socket or port, a connection lost on the
# way, the server shutting down or starting up. A pooled connection the server terminated while it
# was idle fails its next statement with InternalClientError (MagicStack/asyncpg#1069). The request
# can be sent again; nothing about it was wrong.
UNAVAILABLE: tuple[type[BaseException], ...] = (
    asyncpg.PostgresConnectionError,
    asyncpg.CannotConnectNowError,
    asyncpg.ConnectionDoesNotExistError,
    asyncpg.InterfaceError,
    asyncpg.AdminShutdownError,
    asyncpg.exceptions.OperatorInterventionError,
    asyncpg.exceptions.TooManyConnectionsError,
    asyncpg.exceptions.InternalClientError,
    ConnectionError,
    OSError,
)


def as_outage(exc: BaseException) -> ServiceUnavailable | None:
    """A 503 for an unreachable database, or None when ``exc`` is something else (a bug: 500).

    The repository raises it itself; the transports call this too, for database calls made
    elsewhere (a pool's connect, other repositories).
    """
    if isinstance(exc, UNAVAILABLE):
        return ServiceUnavailable(
            f"the database is unavailable: Postgres cannot be reached right now ({type(exc).__name__});"
            " try again shortly"
        )
    return None
