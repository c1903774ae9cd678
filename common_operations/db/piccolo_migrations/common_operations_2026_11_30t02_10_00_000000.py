"""Issue 10: ``pg_notify('co_task_changed', ...)`` after every update and delete of a task row.

Live streams (SSE ``/tasks/{id}/stream``, gRPC ``WatchTask``) are served by API processes, while the
rows change in the worker's mirror activity (or in another replica): a process learns of a change
only through Postgres. The payload is ``<task id> <cache_version>`` (the version the BEFORE UPDATE
trigger of migration 23:05 just raised), or ``<task id> deleted``, so a listener that already holds
that version skips the read. An AFTER trigger, like the cache version's, is the one place no write
path can forget; the notification is sent only if the transaction commits. Inserts do not notify:
a stream starts from a row that exists.
"""

from piccolo.apps.migrations.auto.migration_manager import MigrationManager
from piccolo.table import Table

RAW_FORWARDS = [
    "CREATE OR REPLACE FUNCTION tasks_notify_change() RETURNS trigger LANGUAGE plpgsql AS $$"
    " BEGIN"
    " IF TG_OP = 'DELETE' THEN"
    " PERFORM pg_notify('co_task_changed', OLD.id::text || ' deleted');"
    " ELSE"
    " PERFORM pg_notify('co_task_changed', NEW.id::text || ' ' || NEW.cache_version::text);"
    " END IF;"
    " RETURN NULL;"
    " END $$",
    "DROP TRIGGER IF EXISTS tasks_notify_change ON tasks",
    "CREATE TRIGGER tasks_notify_change AFTER UPDATE OR DELETE ON tasks"
    " FOR EACH ROW EXECUTE FUNCTION tasks_notify_change()",
]
RAW_BACKWARDS = [
    "DROP TRIGGER IF EXISTS tasks_notify_change ON tasks",
    "DROP FUNCTION IF EXISTS tasks_notify_change()",
]


class RawTable(Table):
    pass


ID = "2026-11-30T02:10:00:000000"
VERSION = "1.38.0"
DESCRIPTION = "task_change_notifications"


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
