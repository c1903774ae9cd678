"""SettingsService on real Postgres and Redis: defaults, partial updates, versions, audit, events, cache."""

from __future__ import annotations

import asyncio
import json
import socket
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import yaml
from redis.asyncio import Redis

from common_operations.db.settings_repository import SettingsRepository
from common_operations.domain.errors import (
    PermissionDenied,
    PreconditionFailed,
    SettingsGroupNotFound,
    ValidationFailed,
)
from common_operations.domain.preconditions import parse_if_match
from common_operations.domain.principal import Principal
from common_operations.domain.settings_schema import parse_group_schema
from common_operations.infra.versioned_cache import VersionedCache
from common_operations.services.settings import SettingsService

PAYMENT_YAML = Path(__file__).resolve().parents[2] / "configs" / "settings" / "payment.yaml"
ADMIN = Principal("alice", frozenset({"admin"}))
USER = Principal("bob", frozenset({"customer"}))


@pytest.fixture
def group() -> str:
    """A payment-schema group of this test's own, so tests never share a row."""
    return f"pay{uuid.uuid4().hex[:12]}"


def service_for(pool: asyncpg.Pool, redis: Redis | None, group: str) -> SettingsService:
    schema = parse_group_schema(group, yaml.safe_load(PAYMENT_YAML.read_text()))
    cache = VersionedCache(redis, f"co-test:{group}:", 60)
    return SettingsService(SettingsRepository(pool), {group: schema}, cache)


@pytest.fixture
def service(pool: asyncpg.Pool, redis: Redis, group: str) -> SettingsService:
    return service_for(pool, redis, group)


async def counts(pool: asyncpg.Pool, group: str) -> tuple[int, int]:
    audits = await pool.fetchval("SELECT count(*) FROM settings_audit WHERE key = $1", group)
    events = await pool.fetchval(
        "SELECT count(*) FROM outbox_events WHERE subject = $1 AND event_type = 'settings.changed'", group
    )
    return int(audits), int(events)


async def test_defaults_before_any_change(service: SettingsService, group: str) -> None:
    view = await service.get(ADMIN, group)
    assert view.version == 0
    assert view.values == {
        "stripeEnabled": True,
        "stripePublicKey": "",
        "paypalEnabled": False,
        "codEnabled": True,
        "bankTransferEnabled": True,
    }
    public = await service.get_public(group)
    assert "stripePublicKey" not in public.values and public.values["codEnabled"] is True


async def test_partial_update_audit_and_event(
    service: SettingsService, pool: asyncpg.Pool, group: str
) -> None:
    result = await service.update(ADMIN, group, {"paypalEnabled": True, "stripePublicKey": "pk_test_abc"})
    assert result.changed and result.view.version == 1
    assert set(result.changed_keys) == {"paypalEnabled", "stripePublicKey"}
    view = await service.get(ADMIN, group)
    assert view.version == 1
    assert view.values["paypalEnabled"] is True and view.values["stripePublicKey"] == "pk_test_abc"
    assert view.values["codEnabled"] is True  # untouched keys keep their values

    second = await service.update(ADMIN, group, {"codEnabled": False}, parse_if_match('"1"'))
    assert second.view.version == 2
    assert (await service.get(ADMIN, group)).values["paypalEnabled"] is True

    audits = await pool.fetch(
        "SELECT old_value, new_value, changed_by, version FROM settings_audit"
        " WHERE key = $1 ORDER BY version",
        group,
    )
    assert [a["version"] for a in audits] == [1, 2]
    first_old, first_new = json.loads(audits[0]["old_value"]), json.loads(audits[0]["new_value"])
    assert first_old["paypalEnabled"] is False and first_new["paypalEnabled"] is True
    assert audits[0]["changed_by"] == "alice"
    events = await pool.fetch(
        "SELECT event_id, stream, topic_kind, data FROM outbox_events WHERE subject = $1 ORDER BY id", group
    )
    assert [e["event_id"] for e in events] == [f"settings:{group}:v1", f"settings:{group}:v2"]
    data = json.loads(events[1]["data"])
    assert data["group"] == group and data["version"] == 2
    assert data["changedKeys"] == ["codEnabled"] and data["values"] == {"codEnabled": False}
    assert events[1]["stream"] == f"settings:{group}" and events[1]["topic_kind"] == "settings_changed"


async def test_same_values_change_nothing(service: SettingsService, pool: asyncpg.Pool, group: str) -> None:
    await service.update(ADMIN, group, {"paypalEnabled": True})
    before = await counts(pool, group)
    again = await service.update(ADMIN, group, {"paypalEnabled": True, "codEnabled": True})
    assert not again.changed and again.view.version == 1
    assert await counts(pool, group) == before == (1, 1)


async def test_stale_if_match_changes_nothing(
    service: SettingsService, pool: asyncpg.Pool, group: str
) -> None:
    await service.update(ADMIN, group, {"paypalEnabled": True})
    before = await counts(pool, group)
    with pytest.raises(PreconditionFailed):
        await service.update(ADMIN, group, {"codEnabled": False}, parse_if_match('"0"'))
    view = await service.get(ADMIN, group)
    assert view.version == 1 and view.values["codEnabled"] is True
    assert await counts(pool, group) == before


async def test_concurrent_updates_with_the_same_if_match_one_wins(
    service: SettingsService, pool: asyncpg.Pool, group: str
) -> None:
    condition = parse_if_match('"0"')
    outcomes = await asyncio.gather(
        *(service.update(ADMIN, group, {"stripePublicKey": f"pk_test_{i}"}, condition) for i in range(6)),
        return_exceptions=True,
    )
    won = [o for o in outcomes if not isinstance(o, BaseException)]
    assert len(won) == 1, outcomes
    assert all(isinstance(o, PreconditionFailed) for o in outcomes if isinstance(o, BaseException))
    assert won[0].changed and won[0].view.version == 1
    assert await counts(pool, group) == (1, 1)
    winner = won[0].view.values["stripePublicKey"]
    assert (await service.get(ADMIN, group)).values["stripePublicKey"] == winner


async def test_validation_and_authorisation(service: SettingsService, group: str) -> None:
    with pytest.raises(ValidationFailed) as caught:
        await service.update(ADMIN, group, {"stripeEnabled": "true"})
    assert caught.value.details["field"] == "stripeEnabled"
    with pytest.raises(ValidationFailed) as caught:
        await service.update(ADMIN, group, {"applePay": True})
    assert caught.value.details["field"] == "applePay"
    with pytest.raises(PermissionDenied):
        await service.update(USER, group, {"codEnabled": False})
    with pytest.raises(PermissionDenied):
        await service.get(USER, group)
    with pytest.raises(SettingsGroupNotFound):
        await service.get(ADMIN, "nosuchgroup")
    assert (await service.get(ADMIN, group)).version == 0


async def test_cached_reads_are_never_stale(pool: asyncpg.Pool, redis: Redis, group: str) -> None:
    # Two processes' services share Redis and Postgres: one warms the cache, the other changes.
    reader, writer = service_for(pool, redis, group), service_for(pool, redis, group)
    assert (await reader.get_public(group)).values["paypalEnabled"] is False  # warm
    assert await redis.get(f"co-test:{group}:{group}") is not None
    await writer.update(ADMIN, group, {"paypalEnabled": True})
    assert (await reader.get_public(group)).values["paypalEnabled"] is True
    # A slow reader putting back the version it read before the change does not win.
    await VersionedCache(redis, f"co-test:{group}:", 60).put(group, 0, {})
    assert (await reader.get(ADMIN, group)).version == 1


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_works_without_redis(pool: asyncpg.Pool, group: str) -> None:
    dead = Redis.from_url(f"redis://127.0.0.1:{closed_port()}/0", socket_connect_timeout=1)
    try:
        service = service_for(pool, dead, group)
        assert (await service.get(ADMIN, group)).version == 0
        result = await service.update(ADMIN, group, {"codEnabled": False})
        assert result.view.version == 1
        assert (await service.get(ADMIN, group)).values["codEnabled"] is False
        assert (await service.get_public(group)).values["codEnabled"] is False
    finally:
        await dead.aclose()


async def test_no_redis_configured(pool: asyncpg.Pool, group: str) -> None:
    service = service_for(pool, None, group)
    await service.update(ADMIN, group, {"bankTransferEnabled": False})
    values: dict[str, Any] = (await service.get(ADMIN, group)).values
    assert values["bankTransferEnabled"] is False
