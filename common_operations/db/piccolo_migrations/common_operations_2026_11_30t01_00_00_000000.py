"""Issue 8: API keys, the append-only admin audit log, and who created each task.

``admin_audit_log`` refuses UPDATE, DELETE and TRUNCATE through triggers, so no code path of the
service (nor a mistaken manual statement) can rewrite history; only dropping the trigger can, which
needs the table owner. ``tasks.created_by`` tells a service's tasks from its users' (a service may
create a task on behalf of a user, who then owns it as ``requested_by``).
"""

from piccolo.apps.migrations.auto.migration_manager import MigrationManager
from piccolo.table import Table

RAW_FORWARDS = [
    "ALTER TABLE tasks ADD COLUMN IF NOT EXISTS created_by VARCHAR(255)",
    "CREATE INDEX IF NOT EXISTS tasks_created_by_created_idx"
    " ON tasks (created_by, created_at DESC, id DESC) WHERE created_by IS NOT NULL",
    "CREATE TABLE IF NOT EXISTS api_keys ("
    " id UUID PRIMARY KEY,"
    " prefix VARCHAR(32) NOT NULL UNIQUE,"
    " key_hash VARCHAR(64) NOT NULL,"
    " principal VARCHAR(255) NOT NULL,"
    " roles JSONB NOT NULL DEFAULT '[]',"
    " description TEXT NOT NULL DEFAULT '',"
    " created_by VARCHAR(255) NOT NULL,"
    " created_at TIMESTAMPTZ NOT NULL DEFAULT now(),"
    " expires_at TIMESTAMPTZ,"
    " revoked_at TIMESTAMPTZ,"
    " revoked_by VARCHAR(255),"
    " last_used_at TIMESTAMPTZ)",
    "CREATE TABLE IF NOT EXISTS admin_audit_log ("
    " id BIGSERIAL PRIMARY KEY,"
    " actor VARCHAR(255) NOT NULL,"
    " actor_roles JSONB NOT NULL DEFAULT '[]',"
    " action VARCHAR(100) NOT NULL,"
    " entity_type VARCHAR(100) NOT NULL,"
    " entity_id VARCHAR(255) NOT NULL,"
    " old_state JSONB,"
    " new_state JSONB,"
    " metadata JSONB NOT NULL DEFAULT jsonb_build_object(),"
    " created_at TIMESTAMPTZ NOT NULL DEFAULT now())",
    "CREATE INDEX IF NOT EXISTS admin_audit_log_actor_idx ON admin_audit_log (actor, id DESC)",
    "CREATE INDEX IF NOT EXISTS admin_audit_log_entity_idx"
    " ON admin_audit_log (entity_type, entity_id, id DESC)",
    "CREATE OR REPLACE FUNCTION admin_audit_log_append_only() RETURNS trigger LANGUAGE plpgsql AS $$"
    " BEGIN RAISE EXCEPTION 'admin_audit_log is append-only (% refused)', TG_OP"
    " USING ERRCODE = 'insufficient_privilege'; END $$",
    "DROP TRIGGER IF EXISTS admin_audit_log_no_change ON admin_audit_log",
    "CREATE TRIGGER admin_audit_log_no_change BEFORE UPDATE OR DELETE ON admin_audit_log"
    " FOR EACH ROW EXECUTE FUNCTION admin_audit_log_append_only()",
    "DROP TRIGGER IF EXISTS admin_audit_log_no_truncate ON admin_audit_log",
    "CREATE TRIGGER admin_audit_log_no_truncate BEFORE TRUNCATE ON admin_audit_log"
    " FOR EACH STATEMENT EXECUTE FUNCTION admin_audit_log_append_only()",
]
RAW_BACKWARDS = [
    "DROP TABLE IF EXISTS admin_audit_log",
    "DROP FUNCTION IF EXISTS admin_audit_log_append_only()",
    "DROP TABLE IF EXISTS api_keys",
    "DROP INDEX IF EXISTS tasks_created_by_created_idx",
    "ALTER TABLE tasks DROP COLUMN IF EXISTS created_by",
]


class RawTable(Table):
    pass


ID = "2026-11-30T01:00:00:000000"
VERSION = "1.38.0"
DESCRIPTION = "auth_audit"


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
