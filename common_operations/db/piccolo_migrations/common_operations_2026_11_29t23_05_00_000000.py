"""``tasks.cache_version``: a version of what GetTask shows, raised by Postgres on every update.

The Redis task cache (infra/task_cache.py) keeps a snapshot only if no newer version is known, so
the version must rise with every change of the row, whoever makes it. A ``BEFORE UPDATE`` trigger
is the one place a future write path cannot forget (``seq`` does not rise on a bulk job's progress
writes, nor on ``set_run_id``). Updates of one row are serialised by its row lock, so ``old + 1``
never repeats a committed value.
"""

from piccolo.apps.migrations.auto.migration_manager import MigrationManager
from piccolo.table import Table

RAW_FORWARDS = [
    "ALTER TABLE tasks ADD COLUMN IF NOT EXISTS cache_version BIGINT NOT NULL DEFAULT 0",
    "CREATE OR REPLACE FUNCTION tasks_bump_cache_version() RETURNS trigger LANGUAGE plpgsql AS $$"
    " BEGIN NEW.cache_version := OLD.cache_version + 1; RETURN NEW; END $$",
    "DROP TRIGGER IF EXISTS tasks_cache_version ON tasks",
    "CREATE TRIGGER tasks_cache_version BEFORE UPDATE ON tasks"
    " FOR EACH ROW EXECUTE FUNCTION tasks_bump_cache_version()",
]
RAW_BACKWARDS = [
    "DROP TRIGGER IF EXISTS tasks_cache_version ON tasks",
    "DROP FUNCTION IF EXISTS tasks_bump_cache_version()",
    "ALTER TABLE tasks DROP COLUMN IF EXISTS cache_version",
]


class RawTable(Table):
    pass


ID = "2026-11-29T23:05:00:000000"
VERSION = "1.38.0"
DESCRIPTION = "task_cache_version"


async def forwards() -> MigrationManager:
    manager = MigrationManager(migration_id=ID, app_name="common_operations", description=DESCRIPTION)

    async def run() -> None:
        for statement in RAW_FORWARDS:
            await RawTable.raw(statement)

    async def run_backwards() -> None:
        for statement in RAW_BACKWARDS:
            await RawTable.raw(statement)

    manager.add_raw(run)
    manager.add_raw_backwards(run_backwards)
    return manager
