"""REST in ``required`` auth mode: bad credentials are 401 problems, good ones are the caller.

The runtime of these tests runs with ``auth.mode: required`` (the test settings' HS256 secret,
issuer and audience), so a request without credentials is refused except on public routes.
"""

from __future__ import annotations

from typing import Any

import pytest

from common_operations.config import AuthSettings, Settings
from tests.auth_support import BAD_TOKENS, auth_settings, bearer
from tests.web.support import TASKS, Client, assert_problem


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """The test settings in required mode."""
    settings.auth = AuthSettings(**auth_settings("required"))
    return settings


def unauthenticated(resp: Any, reason: str) -> dict[str, Any]:
    problem = assert_problem(resp, 401, "UNAUTHENTICATED")
    assert resp.headers["www-authenticate"].startswith("Bearer"), resp.headers
    assert reason in problem["detail"], problem
    return problem


@pytest.mark.parametrize("name", list(BAD_TOKENS))
async def test_bad_tokens_are_401_on_every_kind_of_route(api: Client, name: str) -> None:
    make, reason = BAD_TOKENS[name]
    headers = {"authorization": f"Bearer {make()}"}
    unauthenticated(await api.get(TASKS, headers=headers), reason)
    unauthenticated(await api.post(TASKS, json={"taskType": "process"}, headers=headers), reason)
    unauthenticated(await api.get("/api/v1/admin/api-keys", headers=headers), reason)
    # Also where no credentials are needed: a credential that is sent must verify.
    unauthenticated(await api.get("/api/v1/public/settings/payment", headers=headers), reason)


async def test_without_credentials_only_public_routes_answer(api: Client) -> None:
    unauthenticated(await api.get(TASKS), "credentials are required")
    unauthenticated(await api.post(TASKS, json={"taskType": "process"}), "credentials are required")
    unauthenticated(await api.get("/api/v1/admin/api-keys"), "credentials are required")
    assert (await api.get("/health/live")).status_code == 200
    assert (await api.get("/api/v1/public/settings/payment")).status_code == 200
    # x-user-id proves nothing.
    unauthenticated(await api.get(TASKS, headers={"x-user-id": "admin"}), "credentials are required")


async def test_a_valid_token_is_the_caller(api: Client) -> None:
    resp = await api.post(TASKS, json={"taskType": "process"}, headers=bearer("alice-web"))
    assert resp.status_code == 201, resp.text
    assert resp.json()["task"]["requestedBy"] == "alice-web"


async def test_a_bearer_token_and_an_api_key_together_are_refused(api: Client) -> None:
    headers = {**bearer("alice", ["admin"]), "x-api-key": "co_0123456789ab_" + "A" * 43}
    unauthenticated(await api.get(TASKS, headers=headers), "not both")


async def test_api_keys_over_rest_and_their_refusals(api: Client, pool: Any) -> None:
    admin = bearer("root", ["admin"])
    resp = await api.post(
        "/api/v1/admin/api-keys", json={"principal": "catalog-web", "roles": ["service"]}, headers=admin
    )
    assert resp.status_code == 201, resp.text
    key = resp.json()["key"]
    key_id = resp.json()["apiKey"]["id"]

    resp = await api.post(TASKS, json={"taskType": "process"}, headers={"x-api-key": key})
    assert resp.status_code == 201, resp.text
    assert resp.json()["task"]["requestedBy"] == "catalog-web"

    tampered = key[:-1] + ("A" if key[-1] != "A" else "B")
    unauthenticated(await api.get(TASKS, headers={"x-api-key": tampered}), "unknown API key")
    unauthenticated(await api.get(TASKS, headers={"x-api-key": "not-a-key"}), "malformed")

    await pool.execute(
        "UPDATE api_keys SET expires_at = now() - interval '1 second' WHERE id = $1::uuid", key_id
    )
    unauthenticated(await api.get(TASKS, headers={"x-api-key": key}), "expired")
    await pool.execute("UPDATE api_keys SET expires_at = NULL WHERE id = $1::uuid", key_id)
    assert (await api.get(TASKS, headers={"x-api-key": key})).status_code == 200

    assert (await api.delete(f"/api/v1/admin/api-keys/{key_id}", headers=admin)).status_code == 200
    unauthenticated(await api.get(TASKS, headers={"x-api-key": key}), "revoked")
