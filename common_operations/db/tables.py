"""Piccolo tables. Schema changes go through committed migrations in ``piccolo_migrations/``."""

from __future__ import annotations

from piccolo.columns import (
    JSONB,
    UUID,
    BigInt,
    BigSerial,
    Boolean,
    DoublePrecision,
    ForeignKey,
    Integer,
    Text,
    Timestamptz,
    Varchar,
)
from piccolo.columns.base import OnDelete
from piccolo.columns.defaults.timestamptz import TimestamptzNow
from piccolo.table import Table


class Tasks(Table, tablename="tasks"):
    """The mirror of every task's state, written by its workflow in sequence order."""

    id = UUID(primary_key=True)
    task_type = Varchar(length=100)
    entity_type = Varchar(length=100, default="")
    status = Varchar(length=20)
    priority = Integer(default=0)
    requested_by = Varchar(length=255)
    params = JSONB(default={})
    file_name = Text(null=True, default=None)
    file_size = BigInt(null=True, default=None)
    input_file_url = Text(null=True, default=None)
    output_file_url = Text(null=True, default=None)
    total_records = BigInt(default=0)
    processed_records = BigInt(default=0)
    success_records = BigInt(default=0)
    failed_records = BigInt(default=0)
    progress_percentage = DoublePrecision(default=0.0)
    scheduled_at = Timestamptz(null=True, default=None)
    started_at = Timestamptz(null=True, default=None)
    completed_at = Timestamptz(null=True, default=None)
    error_message = Text(null=True, default=None)
    retry_count = Integer(default=0)
    max_retries = Integer(default=3)
    created_at = Timestamptz(default=TimestamptzNow())
    updated_at = Timestamptz(default=TimestamptzNow())
    # Mirror sequence of the last applied write; a write with an older one is ignored.
    seq = BigInt(default=0)
    # The latest Temporal run that wrote the row (continue-as-new changes it); NULL until one wrote.
    run_id = Varchar(length=64, null=True, default=None)
    # Fence token: the first run id of the run chain that owns the task's current attempt. Only the
    # owner's writes apply; a new attempt takes ownership with a compare-and-set on ``seq``.
    owner_run_id = Varchar(length=64, null=True, default=None)
    # Set while the workflow waits out the backoff of an automatic retry.
    next_retry_at = Timestamptz(null=True, default=None)
    # Stored objects of a bulk task by role (input, output, result), with their manifest.
    files = JSONB(default={})
    # The import whose failed rows this task imports again.
    source_task_id = UUID(null=True, default=None)
    # Where the final state is POSTed, signed (validated against SSRF when the task is created).
    callback_url = Text(null=True, default=None)
    # Raised by a trigger on every update (migration 23:05): the task cache's snapshot version.
    cache_version = BigInt(default=0)
    # The principal whose request created the task (requested_by is the owner; they differ when
    # a service creates a task on behalf of a user). NULL for tasks created before issue 8.
    created_by = Varchar(length=255, null=True, default=None)


class TaskLogs(Table, tablename="task_logs"):
    """Log lines of a task, ordered by ``(seq, id)``."""

    id = BigSerial(primary_key=True)
    task_id = ForeignKey(references=Tasks, on_delete=OnDelete.cascade, index=True)
    seq = BigInt()
    level = Varchar(length=10, default="info")
    message = Text()
    # Extra context as a JSON document (seed: TaskLog.details, a string).
    details = Text(null=True, default=None)
    created_at = Timestamptz(default=TimestamptzNow())


class TaskEvents(Table, tablename="task_events"):
    """Task history and the transactional outbox (``published_at`` NULL = not yet relayed)."""

    id = BigSerial(primary_key=True)
    task_id = ForeignKey(references=Tasks, on_delete=OnDelete.cascade, index=True)
    seq = BigInt()
    event_type = Varchar(length=50)
    status = Varchar(length=20)
    payload = JSONB(default={})
    created_at = Timestamptz(default=TimestamptzNow())
    published_at = Timestamptz(null=True, default=None)


class Settings(Table, tablename="settings"):
    """Key/value settings (payment settings live under ``payment``)."""

    key = Varchar(length=100, primary_key=True)
    value = JSONB(default={})
    is_public = Boolean(default=False)
    # Optimistic-concurrency version (the ETag); every change adds one.
    version = BigInt(default=0)
    updated_by = Varchar(length=255, default="")
    updated_at = Timestamptz(default=TimestamptzNow())


class SettingsAudit(Table, tablename="settings_audit"):
    """Every change of a setting: who, when, before and after."""

    id = BigSerial(primary_key=True)
    key = Varchar(length=100, index=True)
    old_value = JSONB(null=True, default=None)
    new_value = JSONB(default={})
    changed_by = Varchar(length=255)
    changed_at = Timestamptz(default=TimestamptzNow())
    version = BigInt(default=0)


class Messages(Table, tablename="messages"):
    """i18n message templates: one row per key, its translations by language code."""

    key = Varchar(length=255, primary_key=True)
    category = Varchar(length=100)
    default_language = Varchar(length=10)
    # {language code: template}
    translations = JSONB(default={})
    # Names of the variables the templates use.
    variables = JSONB(default=[])
    # Off: the template opted out of HTML-escaping its variable values.
    escape_html = Boolean(default=True)
    version = BigInt(default=1)
    created_at = Timestamptz(default=TimestamptzNow())
    updated_at = Timestamptz(default=TimestamptzNow())


class OutboxEvents(Table, tablename="outbox_events"):
    """Events that are not a task's (settings, messages), relayed like ``task_events``."""

    id = BigSerial(primary_key=True)
    # Events of one stream are published in order (e.g. ``settings:payment``, ``messages``).
    stream = Text()
    # Which topic of ``events.topics`` (e.g. ``settings_changed``).
    topic_kind = Text()
    # Deterministic CloudEvents id (consumers deduplicate on it).
    event_id = Text(unique=True)
    event_type = Text()
    subject = Text()
    data = JSONB(default={})
    created_at = Timestamptz(default=TimestamptzNow())
    published_at = Timestamptz(null=True, default=None)


class OutboxLeases(Table, tablename="outbox_leases"):
    """A relay's hold on one stream while it publishes it (expires if the relay dies)."""

    stream = Text(primary_key=True)
    holder = Text()
    lease_until = Timestamptz()


class IdempotencyKeys(Table, tablename="idempotency_keys"):
    """A CreateTask's ``(principal, key)``, the hash of its body and the task it made."""

    principal = Varchar(length=255)
    key = Varchar(length=255)
    request_hash = Text()
    task_id = ForeignKey(references=Tasks, on_delete=OnDelete.cascade)
    created_at = Timestamptz(default=TimestamptzNow())


class ApiKeys(Table, tablename="api_keys"):
    """API keys of services: only a hash of the secret is kept (the key is shown once)."""

    id = UUID(primary_key=True)
    # The public part of the key ("co_<prefix>_<secret>"), how a presented key is looked up.
    prefix = Varchar(length=32, unique=True)
    # SHA-256 of the whole key, hex (the key is 256 random bits: no slow hash needed).
    key_hash = Varchar(length=64)
    principal = Varchar(length=255)
    roles = JSONB(default=[])
    description = Text(default="")
    created_by = Varchar(length=255)
    created_at = Timestamptz(default=TimestamptzNow())
    expires_at = Timestamptz(null=True, default=None)
    revoked_at = Timestamptz(null=True, default=None)
    revoked_by = Varchar(length=255, null=True, default=None)
    last_used_at = Timestamptz(null=True, default=None)


class AdminAuditLog(Table, tablename="admin_audit_log"):
    """Append-only record of privileged actions (a trigger refuses UPDATE, DELETE and TRUNCATE)."""

    id = BigSerial(primary_key=True)
    actor = Varchar(length=255)
    actor_roles = JSONB(default=[])
    action = Varchar(length=100)
    entity_type = Varchar(length=100)
    entity_id = Varchar(length=255)
    old_state = JSONB(null=True, default=None)
    new_state = JSONB(null=True, default=None)
    metadata = JSONB(default={})
    created_at = Timestamptz(default=TimestamptzNow())


ALL_TABLES: list[type[Table]] = [
    Tasks,
    TaskLogs,
    TaskEvents,
    Settings,
    SettingsAudit,
    Messages,
    OutboxEvents,
    OutboxLeases,
    IdempotencyKeys,
    ApiKeys,
    AdminAuditLog,
]
