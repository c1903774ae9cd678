"""Bulk import/export: a task's stored files, the task a row retry came from, per-row results."""

from piccolo.apps.migrations.auto.migration_manager import MigrationManager
from piccolo.table import Table

# ``files`` holds the stored objects of a task by role (input, output, result) with their manifest;
# the object keys never come from user input. ``task_row_results`` keeps only the rejected rows of
# an import (the accepted ones are the rest), keyed by row number so that a chunk redone after a
# crash replaces its own rows' results instead of adding to them. ``bulk_checkpoints`` is where
# an import into an ``http`` sink resumes (a ``postgres`` sink keeps its checkpoint beside its rows).
RAW_FORWARDS = [
    "ALTER TABLE tasks ADD COLUMN IF NOT EXISTS files JSONB NOT NULL DEFAULT jsonb_build_object()",
    "ALTER TABLE tasks ADD COLUMN IF NOT EXISTS source_task_id UUID NULL",
    "CREATE TABLE IF NOT EXISTS task_row_results ("
    " task_id UUID NOT NULL REFERENCES tasks (id) ON DELETE CASCADE,"
    " row_no BIGINT NOT NULL,"
    " code TEXT NOT NULL,"
    " field TEXT NULL,"
    " message TEXT NOT NULL,"
    " PRIMARY KEY (task_id, row_no))",
    "CREATE TABLE IF NOT EXISTS bulk_checkpoints ("
    " job_id TEXT PRIMARY KEY,"
    " next_offset BIGINT NOT NULL, next_row BIGINT NOT NULL, chunk_no INTEGER NOT NULL,"
    " processed BIGINT NOT NULL, first_row BIGINT NOT NULL, done BOOLEAN NOT NULL DEFAULT false,"
    " rejections JSONB NOT NULL DEFAULT jsonb_build_array(), updated_at TIMESTAMPTZ NOT NULL DEFAULT now())",
    "CREATE INDEX IF NOT EXISTS tasks_final_completed_idx ON tasks (completed_at)"
    " WHERE status IN ('completed', 'failed', 'cancelled')",
]
RAW_BACKWARDS = [
    "DROP INDEX IF EXISTS tasks_final_completed_idx",
    "DROP TABLE IF EXISTS bulk_checkpoints",
    "DROP TABLE IF EXISTS task_row_results",
    "ALTER TABLE tasks DROP COLUMN IF EXISTS source_task_id",
    "ALTER TABLE tasks DROP COLUMN IF EXISTS files",
]


class RawTable(Table):
    pass


ID = "2026-11-29T19:20:00:000000"
VERSION = "1.38.0"
DESCRIPTION = "bulk_files"


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
