"""Settings over REST: seed payment routes, generic groups, ETag/If-Match, 403s, 400s naming the key."""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import yaml
from redis.asyncio import Redis

from common_operations.bootstrap import Runtime
from common_operations.db.settings_repository import SettingsRepository
from common_operations.domain.settings_schema import parse_group_schema
from common_operations.infra.versioned_cache import VersionedCache
from common_operations.services.settings import SettingsService
from common_operations.web.app import create_app
from tests.auth_support import bearer

PAYMENT_YAML = Path(__file__).resolve().parents[2] / "configs" / "settings" / "payment.yaml"
ADMIN = bearer("alice", ["admin"])
CUSTOMER = bearer("bob", ["customer"])
PAYMENT_KEYS = {"stripeEnabled", "stripePublicKey", "paypalEnabled", "codEnabled", "bankTransferEnabled"}


@pytest.fixture
def group() -> str:
    """A group declared with the payment schema, of this test's own (fresh row)."""
    return f"pay{uuid.uuid4().hex[:12]}"


@pytest.fixture
async def api(runtime: Runtime, redis_url: str, group: str) -> AsyncIterator[httpx.AsyncClient]:
    """The REST app with the payment group and this test's group, cached in the test Redis."""
    raw = yaml.safe_load(PAYMENT_YAML.read_text())
    schemas = {"payment": parse_group_schema("payment", raw), group: parse_group_schema(group, raw)}
    redis = Redis.from_url(redis_url)
    service = SettingsService(
        SettingsRepository(runtime.engine.pool), schemas, VersionedCache(redis, f"co-test:{group}:", 60)
    )
    app = create_app(dataclasses.replace(runtime, settings_groups=service))
    transport = httpx.ASGITransport(app=app)  # type: ignore[arg-type]
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver.local") as client:
        yield client
    await redis.aclose()


def version_of(resp: httpx.Response) -> int:
    tag = resp.headers["etag"]
    assert tag.startswith('"') and tag.endswith('"'), tag
    return int(tag.strip('"'))


async def test_seed_payment_routes(api: httpx.AsyncClient) -> None:
    resp = await api.get("/api/v1/settings/payment", headers=ADMIN)
    assert resp.status_code == 200, resp.text
    assert set(resp.json()) == PAYMENT_KEYS
    version = version_of(resp)
    public = await api.get("/api/v1/public/settings/payment")
    assert public.status_code == 200 and "stripePublicKey" not in public.json()
    assert set(public.json()) == PAYMENT_KEYS - {"stripePublicKey"}

    flipped = not resp.json()["paypalEnabled"]
    put = await api.put(
        "/api/v1/settings/payment",
        json={"paypalEnabled": flipped},
        headers={**ADMIN, "If-Match": f'"{version}"'},
    )
    assert put.status_code == 200, put.text
    assert put.json()["success"] is True and isinstance(put.json()["message"], str)
    assert version_of(put) == version + 1
    assert (await api.get("/api/v1/public/settings/payment")).json()["paypalEnabled"] is flipped


async def test_defaults_partial_update_and_etag(api: httpx.AsyncClient, group: str) -> None:
    resp = await api.get(f"/api/v1/settings/{group}", headers=ADMIN)
    assert resp.status_code == 200
    assert resp.json() == {
        "stripeEnabled": True,
        "stripePublicKey": "",
        "paypalEnabled": False,
        "codEnabled": True,
        "bankTransferEnabled": True,
    }
    assert resp.headers["etag"] == '"0"'
    put = await api.put(f"/api/v1/settings/{group}", json={"stripePublicKey": "pk_live_Key1"}, headers=ADMIN)
    assert put.status_code == 200 and put.headers["etag"] == '"1"'
    assert put.json() == {
        "success": True,
        "message": put.json()["message"],
        "version": 1,
        "changedKeys": ["stripePublicKey"],
    }
    after = (await api.get(f"/api/v1/settings/{group}", headers=ADMIN)).json()
    assert after["stripePublicKey"] == "pk_live_Key1" and after["codEnabled"] is True
    assert "stripePublicKey" not in (await api.get(f"/api/v1/public/settings/{group}")).json()


async def test_stale_if_match_is_412_and_changes_nothing(
    api: httpx.AsyncClient, runtime: Runtime, group: str
) -> None:
    await api.put(f"/api/v1/settings/{group}", json={"codEnabled": False}, headers=ADMIN)

    async def counts() -> tuple[int, int]:
        pool = runtime.engine.pool
        audits = await pool.fetchval("SELECT count(*) FROM settings_audit WHERE key = $1", group)
        events = await pool.fetchval("SELECT count(*) FROM outbox_events WHERE subject = $1", group)
        return audits, events

    before = await counts()
    assert before == (1, 1)
    resp = await api.put(
        f"/api/v1/settings/{group}", json={"codEnabled": True}, headers={**ADMIN, "If-Match": '"0"'}
    )
    assert resp.status_code == 412, resp.text
    assert resp.json()["code"] == "PRECONDITION_FAILED"
    assert resp.headers["content-type"].startswith("application/problem+json")
    current = await api.get(f"/api/v1/settings/{group}", headers=ADMIN)
    assert current.json()["codEnabled"] is False and current.headers["etag"] == '"1"'
    assert await counts() == before


async def test_concurrent_puts_with_the_same_etag(
    api: httpx.AsyncClient, runtime: Runtime, group: str
) -> None:
    answers = await asyncio.gather(
        *(
            api.put(
                f"/api/v1/settings/{group}",
                json={"stripePublicKey": f"pk_test_{i}"},
                headers={**ADMIN, "If-Match": '"0"'},
            )
            for i in range(4)
        )
    )
    assert sorted(a.status_code for a in answers) == [200, 412, 412, 412]
    audits = await runtime.engine.pool.fetchval("SELECT count(*) FROM settings_audit WHERE key = $1", group)
    assert audits == 1


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"stripeEnabled": "true"}, "stripeEnabled"),
        ({"nonsense": 1}, "nonsense"),
        ({"stripePublicKey": "not-a-key"}, "stripePublicKey"),
        ({"stripePublicKey": "pk_test_" + "x" * 250}, "stripePublicKey"),
    ],
)
async def test_invalid_values_are_400_naming_the_key(
    api: httpx.AsyncClient, group: str, body: dict[str, object], field: str
) -> None:
    resp = await api.put(f"/api/v1/settings/{group}", json=body, headers=ADMIN)
    assert resp.status_code == 400, resp.text
    assert resp.json()["errors"][0]["field"] == field
    assert (await api.get(f"/api/v1/settings/{group}", headers=ADMIN)).headers["etag"] == '"0"'


async def test_authorisation_and_unknown_groups(api: httpx.AsyncClient, group: str) -> None:
    # Without credentials the test app (dev mode) answers as the local admin: non-admins need tokens.
    for headers in (bearer("carol", ["viewer"]), CUSTOMER):
        for method in ("GET", "PUT"):
            resp = await api.request(
                method, "/api/v1/settings/payment", json={"codEnabled": False}, headers=headers
            )
            assert resp.status_code == 403, resp.text
            assert resp.json()["code"] == "PERMISSION_DENIED"
    assert (await api.get(f"/api/v1/public/settings/{group}")).status_code == 200
    resp = await api.get("/api/v1/settings/nosuch", headers=ADMIN)
    assert resp.status_code == 404 and resp.json()["code"] == "SETTINGS_GROUP_NOT_FOUND"
    assert (await api.get("/api/v1/public/settings/nosuch")).status_code == 404
    assert (await api.put(f"/api/v1/settings/{group}", content=b"[1]", headers=ADMIN)).status_code == 400
