"""Constraints and indexes that Piccolo columns cannot express.

- uniqueness of (task_id, seq) makes mirror writes of events/logs idempotent;
- composite (filter, created_at DESC, id DESC) indexes serve every ListTasks filter with the default
  newest-first ordering on a million rows;
- trigram indexes serve ``search`` (ILIKE '%…%') over id, file name and error message;
- a partial index finds unpublished outbox events.
"""

from piccolo.apps.migrations.auto.migration_manager import MigrationManager
from piccolo.table import Table

ID = "2026-11-29T10:40:00:000000"
VERSION = "1.38.0"
DESCRIPTION = "indexes_and_constraints"


class RawTable(Table):
    pass


FORWARDS = [
    "CREATE EXTENSION IF NOT EXISTS pg_trgm",
    "ALTER TABLE task_events ADD CONSTRAINT task_events_task_seq_key UNIQUE (task_id, seq)",
    "ALTER TABLE task_logs ADD CONSTRAINT task_logs_task_seq_key UNIQUE (task_id, seq)",
    "ALTER TABLE messages ADD CONSTRAINT messages_key_locale_key UNIQUE (key, locale)",
    "CREATE INDEX tasks_created_idx ON tasks (created_at DESC, id DESC)",
    "CREATE INDEX tasks_status_created_idx ON tasks (status, created_at DESC, id DESC)",
    "CREATE INDEX tasks_type_created_idx ON tasks (task_type, created_at DESC, id DESC)",
    "CREATE INDEX tasks_entity_created_idx ON tasks (entity_type, created_at DESC, id DESC)",
    "CREATE INDEX tasks_requested_by_created_idx ON tasks (requested_by, created_at DESC, id DESC)",
    "CREATE INDEX tasks_active_updated_idx ON tasks (updated_at)"
    " WHERE status IN ('pending', 'scheduled', 'processing')",
    "CREATE INDEX tasks_search_trgm_idx ON tasks USING gin"
    " ((id::text || ' ' || coalesce(file_name, '') || ' ' || coalesce(error_message, ''))"
    " gin_trgm_ops)",
    "CREATE INDEX task_events_unpublished_idx ON task_events (id) WHERE published_at IS NULL",
]

BACKWARDS = [
    "DROP INDEX IF EXISTS task_events_unpublished_idx",
    "DROP INDEX IF EXISTS tasks_search_trgm_idx",
    "DROP INDEX IF EXISTS tasks_active_updated_idx",
    "DROP INDEX IF EXISTS tasks_requested_by_created_idx",
    "DROP INDEX IF EXISTS tasks_entity_created_idx",
    "DROP INDEX IF EXISTS tasks_type_created_idx",
    "DROP INDEX IF EXISTS tasks_status_created_idx",
    "DROP INDEX IF EXISTS tasks_created_idx",
    "ALTER TABLE messages DROP CONSTRAINT IF EXISTS messages_key_locale_key",
    "ALTER TABLE task_logs DROP CONSTRAINT IF EXISTS task_logs_task_seq_key",
    "ALTER TABLE task_events DROP CONSTRAINT IF EXISTS task_events_task_seq_key",
]


async def forwards() -> MigrationManager:
    manager = MigrationManager(migration_id=ID, app_name="common_operations", description=DESCRIPTION)

    async def run() -> None:
        for statement in FORWARDS:
            await RawTable.raw(statement)

    async def run_backwards() -> None:
        for statement in BACKWARDS:
            await RawTable.raw(statement)

    manager.add_raw(run)
    manager.add_raw_backwards(run_backwards)
    return manager
