"""Indexes and constraints for one writer per task (after the columns of the previous migration)."""

from piccolo.apps.migrations.auto.migration_manager import MigrationManager
from piccolo.table import Table

# One writer per task (the owning run chain, fenced by owner_run_id) replaces the per-seq uniqueness:
# a coalesced progress write may carry several log lines, and annotations (a stuck workflow, a
# webhook attempt) are recorded at the task's current sequence beside its state event. The mirror
# inserts events and logs only when its fenced row update applied, so a retried write adds nothing.
RAW_FORWARDS = [
    "ALTER TABLE task_events DROP CONSTRAINT IF EXISTS task_events_task_seq_key",
    "ALTER TABLE task_logs DROP CONSTRAINT IF EXISTS task_logs_task_seq_key",
    "CREATE INDEX IF NOT EXISTS task_events_task_seq_idx ON task_events (task_id, seq, id)",
    "CREATE INDEX IF NOT EXISTS task_logs_task_seq_idx ON task_logs (task_id, seq, id)",
    "CREATE INDEX IF NOT EXISTS tasks_retry_pending_idx ON tasks (next_retry_at)"
    " WHERE next_retry_at IS NOT NULL",
]
RAW_BACKWARDS = [
    "DROP INDEX IF EXISTS tasks_retry_pending_idx",
    "DROP INDEX IF EXISTS task_logs_task_seq_idx",
    "DROP INDEX IF EXISTS task_events_task_seq_idx",
]


class RawTable(Table):
    pass

ID = "2026-11-29T15:12:04:000000"
VERSION = "1.38.0"
DESCRIPTION = "one_writer_indexes"


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
