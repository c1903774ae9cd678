"""MessagesService on real Postgres and Redis: upsert, versions, events, cache, resolve."""

from __future__ import annotations

import json
import uuid
from typing import Any

import asyncpg
import pytest
from redis.asyncio import Redis

from common_operations.db.messages_repository import MessagesRepository
from common_operations.domain.errors import MessageNotFound, PermissionDenied, PreconditionFailed
from common_operations.domain.preconditions import parse_if_match
from common_operations.domain.principal import Principal
from common_operations.infra.versioned_cache import VersionedCache
from common_operations.services.messages import MessagesService

ADMIN = Principal("alice", frozenset({"admin"}))
USER = Principal("bob")


@pytest.fixture
def prefix() -> str:
    return f"t{uuid.uuid4().hex[:10]}"


def service_for(pool: asyncpg.Pool, redis: Redis | None, prefix: str) -> MessagesService:
    return MessagesService(MessagesRepository(pool), VersionedCache(redis, f"co-test:{prefix}:", 60))


@pytest.fixture
def service(pool: asyncpg.Pool, redis: Redis, prefix: str) -> MessagesService:
    return service_for(pool, redis, prefix)


def body(**overrides: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "category": "email",
        "defaultLanguage": "en",
        "translations": {"en": "Hello {{name}}", "de": "Hallo {{name}}"},
        "variables": ["name"],
    }
    fields.update(overrides)
    return fields


async def events(pool: asyncpg.Pool, key: str) -> list[dict[str, Any]]:
    rows = await pool.fetch(
        "SELECT event_id, data FROM outbox_events"
        " WHERE subject = $1 AND event_type = 'messages.changed' ORDER BY id",
        key,
    )
    return [{"id": r["event_id"], **json.loads(r["data"])} for r in rows]


async def test_upsert_versions_and_events(service: MessagesService, pool: asyncpg.Pool, prefix: str) -> None:
    key = f"{prefix}.greeting"
    created, changed = await service.upsert(ADMIN, key, body())
    assert changed and created.version == 1
    same, changed = await service.upsert(ADMIN, key, body())
    assert not changed and same.version == 1
    updated, changed = await service.upsert(ADMIN, key, body(category="web"), parse_if_match('"1"'))
    assert changed and updated.version == 2 and updated.category == "web"
    with pytest.raises(PreconditionFailed):
        await service.upsert(ADMIN, key, body(category="sms"), parse_if_match('"1"'))
    assert (await service.get(key)).category == "web"
    deleted = await service.delete(ADMIN, key)
    assert deleted.version == 2
    with pytest.raises(MessageNotFound):
        await service.get(key)
    with pytest.raises(MessageNotFound):
        await service.delete(ADMIN, key)
    recreated, _ = await service.upsert(ADMIN, key, body())
    assert recreated.version == 1
    seen = await events(pool, key)
    assert [(e["action"], e["version"]) for e in seen] == [
        ("upsert", 1),
        ("upsert", 2),
        ("delete", 2),
        ("upsert", 1),
    ]
    assert len({e["id"] for e in seen}) == 4  # a re-created key gets new event ids
    assert seen[1]["category"] == "web" and seen[1]["key"] == key


async def test_only_admins_change(service: MessagesService, prefix: str) -> None:
    key = f"{prefix}.x"
    with pytest.raises(PermissionDenied):
        await service.upsert(USER, key, body())
    await service.upsert(ADMIN, key, body())
    with pytest.raises(PermissionDenied):
        await service.delete(USER, key)
    assert (await service.get(key)).version == 1


async def test_list_by_category_paginated(service: MessagesService, prefix: str) -> None:
    for i in range(5):
        await service.upsert(ADMIN, f"{prefix}.m{i}", body(category=prefix))
    await service.upsert(ADMIN, f"{prefix}.other", body(category=prefix + "-other"))
    first = await service.page(prefix, 1, 2)
    assert first.total == 5 and [m.key for m in first.messages] == [f"{prefix}.m0", f"{prefix}.m1"]
    last = await service.page(prefix, 3, 2)
    assert [m.key for m in last.messages] == [f"{prefix}.m4"]


async def test_resolve_fallbacks_and_escaping(service: MessagesService, prefix: str) -> None:
    await service.upsert(ADMIN, f"{prefix}.hi", body())
    await service.upsert(
        ADMIN, f"{prefix}.raw", body(translations={"en": "<p>{{name}}</p>"}, escapeHtml=False)
    )
    keys = [f"{prefix}.hi", f"{prefix}.raw", f"{prefix}.missing"]
    resolved = await service.resolve(keys, "de-AT", {"name": "<script>alert(1)</script>"})
    by_key = {r.key: r for r in resolved}
    hi = by_key[f"{prefix}.hi"]
    assert hi.text == "Hallo &lt;script&gt;alert(1)&lt;/script&gt;" and hi.language == "de"
    raw = by_key[f"{prefix}.raw"]
    assert raw.text == "<p><script>alert(1)</script></p>" and raw.language == "en"
    missing = by_key[f"{prefix}.missing"]
    assert (missing.text, missing.found, missing.language) == (f"{prefix}.missing", False, None)


async def test_cache_is_refreshed_on_change(pool: asyncpg.Pool, redis: Redis, prefix: str) -> None:
    reader, writer = service_for(pool, redis, prefix), service_for(pool, redis, prefix)
    key = f"{prefix}.cached"
    await writer.upsert(ADMIN, key, body())
    assert (await reader.resolve([key], "en", {"name": "A"}))[0].text == "Hello A"  # warm
    assert await redis.get(f"co-test:{prefix}:{key}") is not None
    await writer.upsert(ADMIN, key, body(translations={"en": "Hi {{name}}"}))
    assert (await reader.resolve([key], "en", {"name": "A"}))[0].text == "Hi A"
    await writer.delete(ADMIN, key)
    assert not (await reader.resolve([key], "en", {}))[0].found


async def test_a_reader_racing_a_delete_cannot_bring_the_message_back(
    pool: asyncpg.Pool, redis: Redis, prefix: str
) -> None:
    service = service_for(pool, redis, prefix)
    key = f"{prefix}.raced"
    stored, _ = await service.upsert(ADMIN, key, body())
    await service.delete(ADMIN, key)
    # What a reader that fetched the row just before the delete would store afterwards.
    cache = VersionedCache(redis, f"co-test:{prefix}:", 60)
    await cache.put(key, stored.version, {"stale": True})
    assert not (await service.resolve([key], "en", {}))[0].found
    # Made again under the same key: served (from Postgres) at once.
    await service.upsert(ADMIN, key, body(translations={"en": "Back {{name}}"}))
    assert (await service.resolve([key], "en", {"name": "B"}))[0].text == "Back B"
