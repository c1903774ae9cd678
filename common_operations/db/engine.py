"""Connecting Piccolo to Postgres and applying the committed migrations."""

from __future__ import annotations

import os
from urllib.parse import urlsplit, urlunsplit

import asyncpg
from piccolo.engine.postgres import PostgresEngine

from common_operations.db.tables import ALL_TABLES

PICCOLO_CONF = "common_operations.db.piccolo_conf"


async def connect(url: str, *, pool_min: int = 2, pool_max: int = 10) -> PostgresEngine:
    """Build an engine with a started connection pool and bind every table to it.

    Args:
        url: a ``postgresql://`` DSN (a ``host=/socket/dir`` query works for embedded Postgres).
        pool_min: connections kept open.
        pool_max: most connections at once.
    """
    engine = PostgresEngine(config={"dsn": url})
    await engine.start_connection_pool(
        min_size=min(pool_min, pool_max), max_size=pool_max, reset=_no_session_reset
    )
    for table in ALL_TABLES:
        table._meta.db = engine
    return engine


async def _no_session_reset(connection: asyncpg.Connection) -> None:
    """Skip asyncpg's per-release reset query (a second round trip per call).

    The service never changes session state (no SET, LISTEN, advisory locks or cursors); asyncpg
    still rolls back any open transaction before this hook runs.
    """


def with_database(url: str, database: str) -> str:
    """The same server address with another database name."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, f"/{database}", parts.query, parts.fragment))


async def ensure_database(url: str) -> None:
    """Create the database named in ``url`` if it does not exist yet."""
    name = urlsplit(url).path.lstrip("/") or "postgres"
    conn = await asyncpg.connect(with_database(url, "postgres"))
    try:
        exists = await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name)
        if not exists:
            await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()


async def migrate(url: str) -> list[str]:
    """Create the database if needed and apply all pending migrations.

    Returns:
        Piccolo's report lines.

    Raises:
        RuntimeError: a migration failed.
    """
    from piccolo.apps.migrations.commands.forwards import run_forwards

    await ensure_database(url)
    # Piccolo's migration runner finds its engine through PICCOLO_CONF; point it at this database.
    os.environ["PICCOLO_CONF"] = PICCOLO_CONF
    os.environ["DATABASE_URL"] = url
    from piccolo.apps.migrations.tables import Migration
    from piccolo.conf.apps import Finder

    engine = PostgresEngine(config={"dsn": url})
    Migration._meta.db = engine
    for table in ALL_TABLES:
        table._meta.db = engine
    Finder().get_app_registry()
    result = await run_forwards(app_name="all", fake=False)
    if not result.success:
        raise RuntimeError(f"migrations failed: {result.message}")
    return [result.message or "ok"]
