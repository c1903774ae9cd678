"""``/api/v1/admin/api-keys``: create (shown once), list (no secrets), revoke; admin only; audited."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

from tests.auth_support import bearer
from tests.web.support import TASKS, Client, assert_problem

KEYS = "/api/v1/admin/api-keys"
ADMIN = bearer("keys-admin", ["admin"])


async def create_key(api: Client, **body: Any) -> dict[str, Any]:
    body.setdefault("principal", f"svc-{uuid.uuid4().hex[:8]}")
    body.setdefault("roles", ["service"])
    resp = await api.post(KEYS, json=body, headers=ADMIN)
    assert resp.status_code == 201, resp.text
    created: dict[str, Any] = resp.json()
    return created


async def listed(api: Client, **params: Any) -> list[dict[str, Any]]:
    resp = await api.get(KEYS, params={"pageSize": 1000, **params}, headers=ADMIN)
    assert resp.status_code == 200, resp.text
    keys: list[dict[str, Any]] = resp.json()["apiKeys"]
    return keys


async def test_create_shows_the_key_once_and_list_never(api: Client, pool: asyncpg.Pool) -> None:
    expires = (datetime.now(UTC) + timedelta(days=90)).isoformat()
    created = await create_key(
        api, roles=["service", "viewer"], description="catalog worker", expiresAt=expires
    )
    key, record = created["key"], created["apiKey"]
    assert key.startswith(f"co_{record['prefix']}_")
    assert "not shown again" in created["warning"]
    assert record["roles"] == ["service", "viewer"]
    assert record["createdBy"] == "keys-admin"
    assert record["description"] == "catalog worker"
    assert record["expiresAt"] is not None and record["revokedAt"] is None and record["lastUsedAt"] is None

    # Using the key records its last use.
    resp = await api.get(TASKS, headers={"x-api-key": key})
    assert resp.status_code == 200, resp.text

    resp = await api.get(KEYS, params={"pageSize": 1000}, headers=ADMIN)
    assert key not in resp.text
    stored_hash = await pool.fetchval("SELECT key_hash FROM api_keys WHERE id = $1::uuid", record["id"])
    assert stored_hash not in resp.text
    mine = [k for k in resp.json()["apiKeys"] if k["id"] == record["id"]]
    assert len(mine) == 1
    assert mine[0]["lastUsedAt"] is not None
    assert set(mine[0]) == {
        "id",
        "prefix",
        "principal",
        "roles",
        "description",
        "createdBy",
        "createdAt",
        "expiresAt",
        "revokedAt",
        "revokedBy",
        "lastUsedAt",
    }


async def test_revoke_by_id_stops_the_key_and_is_idempotent(api: Client) -> None:
    created = await create_key(api)
    key_id, key = created["apiKey"]["id"], created["key"]
    assert (await api.get(TASKS, headers={"x-api-key": key})).status_code == 200

    resp = await api.delete(f"{KEYS}/{key_id}", headers=ADMIN)
    assert resp.status_code == 200, resp.text
    revoked = resp.json()
    assert revoked["revokedAt"] is not None and revoked["revokedBy"] == "keys-admin"
    assert_problem(await api.get(TASKS, headers={"x-api-key": key}), 401, "UNAUTHENTICATED")

    again = await api.delete(f"{KEYS}/{key_id}", headers=ADMIN)
    assert again.status_code == 200, again.text
    assert again.json()["revokedAt"] == revoked["revokedAt"]

    # Revoked keys are listed only when asked for.
    assert key_id not in {k["id"] for k in await listed(api)}
    assert key_id in {k["id"] for k in await listed(api, includeRevoked="true")}


async def test_revoke_by_prefix_and_unknown_keys(api: Client) -> None:
    created = await create_key(api)
    resp = await api.delete(f"{KEYS}/{created['apiKey']['prefix']}", headers=ADMIN)
    assert resp.status_code == 200, resp.text
    assert resp.json()["id"] == created["apiKey"]["id"]
    assert_problem(await api.delete(f"{KEYS}/{uuid.uuid4()}", headers=ADMIN), 404, "API_KEY_NOT_FOUND")
    assert_problem(await api.delete(f"{KEYS}/nonsense", headers=ADMIN), 404, "API_KEY_NOT_FOUND")


async def test_only_admins_manage_keys(api: Client) -> None:
    created = await create_key(api)
    for roles in (["operator"], ["service"], ["viewer"], []):
        headers = bearer("not-an-admin", roles)
        body = {"principal": "svc", "roles": ["admin"]}
        assert_problem(await api.post(KEYS, json=body, headers=headers), 403, "PERMISSION_DENIED")
        assert_problem(await api.get(KEYS, headers=headers), 403, "PERMISSION_DENIED")
        assert_problem(
            await api.delete(f"{KEYS}/{created['apiKey']['id']}", headers=headers), 403, "PERMISSION_DENIED"
        )
    # A service key cannot mint keys either (no escalation through a key).
    key_headers = {"x-api-key": created["key"]}
    assert_problem(
        await api.post(KEYS, json={"principal": "x", "roles": ["admin"]}, headers=key_headers),
        403,
        "PERMISSION_DENIED",
    )
    # An admin key can.
    admin_key = (await create_key(api, roles=["admin"]))["key"]
    resp = await api.post(
        KEYS, json={"principal": "minted", "roles": ["viewer"]}, headers={"x-api-key": admin_key}
    )
    assert resp.status_code == 201, resp.text


async def test_invalid_bodies_are_400_naming_the_field(api: Client) -> None:
    past = (datetime.now(UTC) - timedelta(minutes=1)).isoformat()
    for body, field in [
        ({"principal": "", "roles": ["service"]}, "principal"),
        ({"principal": "x" * 256, "roles": ["service"]}, "principal"),
        ({"principal": "svc", "roles": ["Not A Role"]}, "roles"),
        ({"principal": "svc", "roles": ["service"], "expiresAt": past}, "expiresAt"),
        ({"principal": "svc", "roles": ["service"], "expiresAt": "tomorrow"}, "expiresAt"),
        ({"roles": ["service"]}, "principal"),
    ]:
        problem = assert_problem(await api.post(KEYS, json=body, headers=ADMIN), 400, "VALIDATION_FAILED")
        assert field in json.dumps(problem), (body, problem)


async def test_list_pages(api: Client) -> None:
    for _ in range(3):
        await create_key(api)
    resp = await api.get(KEYS, params={"pageSize": 2, "page": 1}, headers=ADMIN)
    assert resp.status_code == 200, resp.text
    first = resp.json()
    assert len(first["apiKeys"]) == 2 and first["total"] >= 3 and first["pageSize"] == 2
    second = (await api.get(KEYS, params={"pageSize": 2, "page": 2}, headers=ADMIN)).json()
    assert not {k["id"] for k in first["apiKeys"]} & {k["id"] for k in second["apiKeys"]}
    assert_problem(await api.get(KEYS, params={"page": 0}, headers=ADMIN), 400, "VALIDATION_FAILED")


async def test_changes_are_in_the_audit_log_without_the_key(api: Client, pool: asyncpg.Pool) -> None:
    created = await create_key(api, principal="audited-svc")
    key_id = created["apiKey"]["id"]
    await api.delete(f"{KEYS}/{key_id}", headers=ADMIN)
    rows = await pool.fetch(
        "SELECT actor, actor_roles, action, old_state, new_state, metadata FROM admin_audit_log"
        " WHERE entity_type = 'api_key' AND entity_id = $1 ORDER BY id",
        key_id,
    )
    assert [(r["action"], r["actor"]) for r in rows] == [
        ("api_key.create", "keys-admin"),
        ("api_key.revoke", "keys-admin"),
    ]
    assert json.loads(rows[0]["actor_roles"]) == ["admin"]
    assert json.loads(rows[0]["metadata"])["via"] == "jwt"
    text = json.dumps([dict(r) for r in rows], default=str)
    assert created["key"] not in text
    assert created["key"].split("_", 2)[2] not in text
