"""Events, webhooks, settings, messages and idempotency (issue 7).

- ``outbox_events``: events that are not a task's (``settings.changed``, ``messages.changed``),
  written in the same transaction as their change; ``task_events`` stays the outbox of tasks.
- ``outbox_leases``: one row per stream (a task id, ``settings:<group>``, ``messages``) while a
  relay publishes it, so events of one stream are published by one relay at a time, in order.
- ``tasks.callback_url``: where the final state of a task is POSTed (signed).
- ``settings.version`` / ``settings_audit.version``: the optimistic-concurrency version (the ETag).
- ``messages`` is replaced: one row per key with its translations (nothing wrote the old table).
- ``idempotency_keys``: a CreateTask's (caller, key) and the hash of its body, with the task made.
The history written before this migration was never relayed and is marked relayed, so that turning
a broker on does not replay every task ever run.
"""

from piccolo.apps.migrations.auto.migration_manager import MigrationManager
from piccolo.table import Table

RAW_FORWARDS = [
    "UPDATE task_events SET published_at = created_at WHERE published_at IS NULL",
    "CREATE INDEX IF NOT EXISTS task_events_unpublished_idx ON task_events (task_id, seq, id)"
    " WHERE published_at IS NULL",
    "CREATE TABLE IF NOT EXISTS outbox_events ("
    " id BIGSERIAL PRIMARY KEY,"
    " stream TEXT NOT NULL,"
    " topic_kind TEXT NOT NULL,"
    " event_id TEXT NOT NULL UNIQUE,"
    " event_type TEXT NOT NULL,"
    " subject TEXT NOT NULL,"
    " data JSONB NOT NULL,"
    " created_at TIMESTAMPTZ NOT NULL DEFAULT now(),"
    " published_at TIMESTAMPTZ NULL)",
    "CREATE INDEX IF NOT EXISTS outbox_events_unpublished_idx ON outbox_events (stream, id)"
    " WHERE published_at IS NULL",
    "CREATE TABLE IF NOT EXISTS outbox_leases ("
    " stream TEXT PRIMARY KEY,"
    " holder TEXT NOT NULL,"
    " lease_until TIMESTAMPTZ NOT NULL)",
    "ALTER TABLE tasks ADD COLUMN IF NOT EXISTS callback_url TEXT NULL",
    "ALTER TABLE settings ADD COLUMN IF NOT EXISTS version BIGINT NOT NULL DEFAULT 0",
    "ALTER TABLE settings_audit ADD COLUMN IF NOT EXISTS version BIGINT NOT NULL DEFAULT 0",
    "DROP TABLE IF EXISTS messages",
    "CREATE TABLE messages ("
    " key VARCHAR(255) PRIMARY KEY,"
    " category VARCHAR(100) NOT NULL,"
    " default_language VARCHAR(10) NOT NULL,"
    " translations JSONB NOT NULL DEFAULT jsonb_build_object(),"
    " variables JSONB NOT NULL DEFAULT jsonb_build_array(),"
    " escape_html BOOLEAN NOT NULL DEFAULT true,"
    " version BIGINT NOT NULL DEFAULT 1,"
    " created_at TIMESTAMPTZ NOT NULL DEFAULT now(),"
    " updated_at TIMESTAMPTZ NOT NULL DEFAULT now())",
    "CREATE INDEX IF NOT EXISTS messages_category_idx ON messages (category, key)",
    "CREATE TABLE IF NOT EXISTS idempotency_keys ("
    " principal VARCHAR(255) NOT NULL,"
    " key VARCHAR(255) NOT NULL,"
    " request_hash TEXT NOT NULL,"
    " task_id UUID NOT NULL REFERENCES tasks (id) ON DELETE CASCADE,"
    " created_at TIMESTAMPTZ NOT NULL DEFAULT now(),"
    " PRIMARY KEY (principal, key))",
    "CREATE INDEX IF NOT EXISTS idempotency_keys_task_idx ON idempotency_keys (task_id)",
]
RAW_BACKWARDS = [
    "DROP TABLE IF EXISTS idempotency_keys",
    "DROP TABLE IF EXISTS messages",
    "CREATE TABLE messages (id BIGSERIAL PRIMARY KEY, key VARCHAR(200) NOT NULL,"
    " locale VARCHAR(20) NOT NULL DEFAULT 'en', template TEXT NOT NULL,"
    " updated_at TIMESTAMPTZ NOT NULL DEFAULT now())",
    "ALTER TABLE settings_audit DROP COLUMN IF EXISTS version",
    "ALTER TABLE settings DROP COLUMN IF EXISTS version",
    "ALTER TABLE tasks DROP COLUMN IF EXISTS callback_url",
    "DROP TABLE IF EXISTS outbox_leases",
    "DROP TABLE IF EXISTS outbox_events",
    "DROP INDEX IF EXISTS task_events_unpublished_idx",
]


class RawTable(Table):
    pass


ID = "2026-11-29T22:40:00:000000"
VERSION = "1.38.0"
DESCRIPTION = "events_settings_messages"


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
