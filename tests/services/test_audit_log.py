"""The admin audit log: append-only at the database, written with settings and messages changes in
their own transaction (secrets masked), and paged by the admin read side."""

from __future__ import annotations

import json
import re
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from common_operations.db import messages_repository, settings_repository
from common_operations.db.audit_repository import AuditEntry, AuditLog
from common_operations.db.messages_repository import MessagesRepository
from common_operations.db.settings_repository import SettingsRepository
from common_operations.domain.errors import PermissionDenied, PreconditionFailed, ValidationFailed
from common_operations.domain.preconditions import parse_if_match
from common_operations.domain.principal import Principal
from common_operations.domain.settings_schema import parse_group_schema
from common_operations.infra.versioned_cache import VersionedCache
from common_operations.services.audit import AuditService
from common_operations.services.messages import MessagesService
from common_operations.services.settings import SECRET_MASK, SettingsService

PACKAGE = Path(__file__).resolve().parents[2] / "common_operations"
SCHEMA = {
    "description": "A group with a secret key",
    "fields": {
        "enabled": {"type": "bool", "default": False, "public": True},
        "apiKey": {"type": "string", "default": "", "secret": True, "max_length": 100},
        "label": {"type": "string", "default": "none", "max_length": 50},
    },
}


def admin() -> Principal:
    """An admin of this test's own (entries are then found by actor without other tests' ones)."""
    return Principal(f"audit-admin-{uuid.uuid4().hex[:10]}", frozenset({"admin"}), "jwt")


def settings_service(pool: asyncpg.Pool, group: str) -> SettingsService:
    schema = parse_group_schema(group, SCHEMA)
    return SettingsService(SettingsRepository(pool), {group: schema}, VersionedCache(None, "unused:", 60))


def messages_service(pool: asyncpg.Pool) -> MessagesService:
    return MessagesService(MessagesRepository(pool), VersionedCache(None, "unused:", 60))


def message_body(**overrides: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "category": "email",
        "defaultLanguage": "en",
        "translations": {"en": "Hello {{name}}"},
        "variables": ["name"],
    }
    fields.update(overrides)
    return fields


async def entries(pool: asyncpg.Pool, entity_type: str, entity_id: str) -> list[dict[str, Any]]:
    rows = await pool.fetch(
        "SELECT actor, actor_roles, action, old_state, new_state, metadata FROM admin_audit_log"
        " WHERE entity_type = $1 AND entity_id = $2 ORDER BY id",
        entity_type,
        entity_id,
    )
    return [
        {k: json.loads(v) if k in {"actor_roles", "old_state", "new_state", "metadata"} and v else v
         for k, v in row.items()}
        for row in rows
    ]  # fmt: skip


# --- append-only ------------------------------------------------------------------------------------


async def test_the_table_refuses_update_delete_and_truncate(pool: asyncpg.Pool) -> None:
    actor = admin()
    entity = f"append-only-{uuid.uuid4().hex[:8]}"
    await AuditLog(pool).record(actor, AuditEntry("test.record", "test", entity, new_state={"n": 1}))
    statements = [
        "UPDATE admin_audit_log SET action = 'rewritten' WHERE entity_id = $1",
        "DELETE FROM admin_audit_log WHERE entity_id = $1",
    ]
    for statement in statements:
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="append-only"):
            await pool.execute(statement, entity)
    with pytest.raises(asyncpg.InsufficientPrivilegeError, match="append-only"):
        await pool.execute("TRUNCATE admin_audit_log")
    assert [e["action"] for e in await entries(pool, "test", entity)] == ["test.record"]


def test_no_code_path_changes_or_removes_entries() -> None:
    changing = re.compile(r"\b(UPDATE|DELETE\s+FROM|TRUNCATE(\s+TABLE)?)\s+admin_audit_log\b", re.IGNORECASE)
    offenders = [
        str(path.relative_to(PACKAGE))
        for path in PACKAGE.rglob("*.py")
        if "piccolo_migrations" not in path.parts and changing.search(path.read_text())
    ]
    assert offenders == []
    public = {name for name in vars(AuditLog) if not name.startswith("_")}
    assert public == {"record", "page"}


# --- settings and messages changes ----------------------------------------------------------------


async def test_a_settings_change_is_audited_with_secrets_masked(pool: asyncpg.Pool) -> None:
    group, actor = f"aud{uuid.uuid4().hex[:10]}", admin()
    service = settings_service(pool, group)
    await service.update(actor, group, {"apiKey": "sk_live_very_secret", "label": "first"})
    await service.update(actor, group, {"label": "second"})

    rows = await entries(pool, "settings", group)
    assert [r["action"] for r in rows] == ["settings.update", "settings.update"]
    first, second = rows
    assert first["actor"] == actor.subject and first["actor_roles"] == ["admin"]
    assert first["old_state"] == {"enabled": False, "apiKey": SECRET_MASK, "label": "none"}
    assert first["new_state"] == {"enabled": False, "apiKey": SECRET_MASK, "label": "first"}
    assert first["metadata"] == {"via": "jwt", "changedKeys": ["apiKey", "label"], "version": 1}
    assert second["old_state"]["label"] == "first" and second["new_state"]["label"] == "second"
    assert second["metadata"]["changedKeys"] == ["label"] and second["metadata"]["version"] == 2
    text = json.dumps(rows)
    assert "sk_live_very_secret" not in text


async def test_no_audit_entry_for_a_change_that_changes_nothing_or_is_refused(pool: asyncpg.Pool) -> None:
    group, actor = f"aud{uuid.uuid4().hex[:10]}", admin()
    service = settings_service(pool, group)
    await service.update(actor, group, {"label": "same"})
    await service.update(actor, group, {"label": "same"})
    with pytest.raises(PreconditionFailed):
        await service.update(actor, group, {"label": "other"}, parse_if_match('"7"'))
    with pytest.raises(PermissionDenied):
        await service.update(Principal("not-an-admin"), group, {"label": "other"})
    assert len(await entries(pool, "settings", group)) == 1


async def test_a_settings_change_and_its_audit_entry_commit_together(
    pool: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    group = f"aud{uuid.uuid4().hex[:10]}"
    service = settings_service(pool, group)

    async def audit_write_fails(*args: Any) -> None:
        raise RuntimeError("the audit write failed")

    monkeypatch.setattr(settings_repository, "record", audit_write_fails)
    with pytest.raises(RuntimeError):
        await service.update(admin(), group, {"label": "never"})
    view = await service.get(admin(), group)
    assert view.version == 0 and view.values["label"] == "none"


async def test_message_upserts_and_deletes_are_audited(pool: asyncpg.Pool) -> None:
    key, actor = f"audit.{uuid.uuid4().hex[:10]}", admin()
    service = messages_service(pool)
    await service.upsert(actor, key, message_body())
    await service.upsert(actor, key, message_body())  # same content: no change, no entry
    await service.upsert(actor, key, message_body(category="sms"))
    await service.delete(actor, key)

    rows = await entries(pool, "message", key)
    assert [r["action"] for r in rows] == ["message.upsert", "message.upsert", "message.delete"]
    created, changed, deleted = rows
    assert created["old_state"] is None and created["new_state"]["category"] == "email"
    assert created["metadata"] == {"via": "jwt", "version": 1, "created": True}
    assert changed["old_state"]["category"] == "email" and changed["new_state"]["category"] == "sms"
    assert changed["metadata"]["created"] is False and changed["metadata"]["version"] == 2
    assert deleted["old_state"]["category"] == "sms" and deleted["new_state"] is None
    assert deleted["metadata"]["version"] == 2 and deleted["actor"] == actor.subject


async def test_a_message_change_and_its_audit_entry_commit_together(
    pool: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    key, actor = f"audit.{uuid.uuid4().hex[:10]}", admin()
    service = messages_service(pool)
    await service.upsert(actor, key, message_body())

    async def audit_write_fails(*args: Any) -> None:
        raise RuntimeError("the audit write failed")

    monkeypatch.setattr(messages_repository, "record", audit_write_fails)
    with pytest.raises(RuntimeError):
        await service.upsert(actor, key, message_body(category="sms"))
    with pytest.raises(RuntimeError):
        await service.delete(actor, key)
    monkeypatch.undo()
    stored = await service.get(key)
    assert stored.category == "email" and stored.version == 1
    assert [r["action"] for r in await entries(pool, "message", key)] == ["message.upsert"]


# --- the read side ---------------------------------------------------------------------------------


async def test_admins_page_by_actor_entity_and_action_newest_first(pool: asyncpg.Pool) -> None:
    log, reader = AuditLog(pool), AuditService(AuditLog(pool))
    actor, other = admin(), admin()
    task_a, task_b = str(uuid.uuid4()), str(uuid.uuid4())
    await log.record(actor, AuditEntry("task.cancel", "task", task_a, metadata={"owner": "u1"}))
    await log.record(actor, AuditEntry("task.delete", "task", task_a, old_state={"status": "cancelled"}))
    await log.record(actor, AuditEntry("task.delete", "task", task_b))
    await log.record(other, AuditEntry("task.retry", "task", task_a))

    mine = await reader.page(actor, actor=actor.subject)
    assert [(e.action, e.entity_id) for e in mine.items] == [
        ("task.delete", task_b),
        ("task.delete", task_a),
        ("task.cancel", task_a),
    ]
    assert mine.total == 3 and mine.page == 1 and mine.page_size == 50
    assert mine.items[1].old_state == {"status": "cancelled"}
    assert mine.items[2].metadata == {"via": "jwt", "owner": "u1"}
    assert mine.items[0].actor_roles == ["admin"] and mine.items[0].created_at is not None

    history = await reader.page(actor, entity_type="task", entity_id=task_a)
    assert [e.action for e in history.items] == ["task.retry", "task.delete", "task.cancel"]
    assert [e.actor for e in history.items] == [other.subject, actor.subject, actor.subject]

    deletes = await reader.page(actor, actor=actor.subject, action="task.delete")
    assert deletes.total == 2

    first = await reader.page(actor, actor=actor.subject, page_size=2)
    assert len(first.items) == 2 and first.total == 3
    second = await reader.page(actor, actor=actor.subject, page=2, page_size=2)
    after = await reader.page(actor, actor=actor.subject, before=first.items[-1].id, page_size=2)
    assert [e.id for e in second.items] == [e.id for e in after.items] == [mine.items[2].id]


async def test_only_admins_read_the_log_and_bad_filters_are_refused(pool: asyncpg.Pool) -> None:
    reader = AuditService(AuditLog(pool))
    for role in ("operator", "service", "viewer"):
        with pytest.raises(PermissionDenied):
            await reader.page(Principal("x", frozenset({role})))
    # A non-admin learns nothing from its filters: refused before they are looked at.
    with pytest.raises(PermissionDenied):
        await reader.page(Principal("x"), page=0)
    bad: list[tuple[dict[str, Any], str]] = [
        ({"entity_id": "abc"}, "entityId"),
        ({"actor": "a" * 256}, "actor"),
        ({"action": "x\x00y"}, "action"),
        ({"entity_type": "t" * 101}, "entityType"),
        ({"before": 0}, "before"),
        ({"page": 0}, "page"),
        ({"page_size": 1001}, "pageSize"),
    ]
    for filters, field in bad:
        with pytest.raises(ValidationFailed) as info:
            await reader.page(admin(), **filters)
        assert info.value.details["field"] == field, filters
