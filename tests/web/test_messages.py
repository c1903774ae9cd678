"""The messages catalogue over REST."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import pytest

from common_operations.bootstrap import Runtime
from tests.auth_support import bearer

ADMIN = bearer("alice", ["admin"])
MESSAGES = "/api/v1/messages"


@pytest.fixture
def prefix() -> str:
    return f"w{uuid.uuid4().hex[:10]}"


def body(**overrides: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "category": "email",
        "defaultLanguage": "en",
        "translations": {"en": "Hello {{name}}", "fr": "Bonjour {{name}}"},
        "variables": ["name"],
    }
    fields.update(overrides)
    return fields


async def test_upsert_get_list_delete(api: httpx.AsyncClient, runtime: Runtime, prefix: str) -> None:
    key = f"{prefix}.welcome"
    resp = await api.put(f"{MESSAGES}/{key}", json=body(category=prefix), headers=ADMIN)
    assert resp.status_code == 200, resp.text
    assert resp.headers["etag"] == '"1"' and resp.json()["version"] == 1
    for i in range(3):
        await api.put(f"{MESSAGES}/{prefix}.m{i}", json=body(category=prefix), headers=ADMIN)
    got = await api.get(f"{MESSAGES}/{key}")
    assert got.status_code == 200 and got.json()["translations"]["fr"] == "Bonjour {{name}}"
    page = (await api.get(MESSAGES, params={"category": prefix, "page": 2, "pageSize": 3})).json()
    assert page["total"] == 4 and [m["key"] for m in page["messages"]] == [f"{prefix}.welcome"]

    stale = await api.put(f"{MESSAGES}/{key}", json=body(category="x"), headers={**ADMIN, "If-Match": '"7"'})
    assert stale.status_code == 412
    assert (await api.delete(f"{MESSAGES}/{key}", headers=bearer("bob"))).status_code == 403
    deleted = await api.delete(f"{MESSAGES}/{key}", headers=ADMIN)
    assert deleted.status_code == 200 and deleted.json() == {"success": True, "version": 1}
    assert (await api.get(f"{MESSAGES}/{key}")).json()["code"] == "MESSAGE_NOT_FOUND"
    events = await runtime.engine.pool.fetch(
        "SELECT data FROM outbox_events WHERE subject = $1 AND event_type = 'messages.changed'", key
    )
    assert len(events) == 2


async def test_only_admins_upsert(api: httpx.AsyncClient, prefix: str) -> None:
    resp = await api.put(f"{MESSAGES}/{prefix}.x", json=body(), headers=bearer("bob"))
    assert resp.status_code == 403 and resp.json()["code"] == "PERMISSION_DENIED"
    assert (await api.get(f"{MESSAGES}/{prefix}.x")).status_code == 404


@pytest.mark.parametrize(
    ("key", "overrides", "field"),
    [
        ("k" * 256, {}, "key"),
        ("ok", {"category": "c" * 101}, "category"),
        ("ok", {"defaultLanguage": "l" * 11}, "defaultLanguage"),
        ("ok", {"translations": {"en": "x", "abcdefghijk": "y"}}, "translations.abcdefghijk"),
        ("ok", {"translations": {"en": "x" * (10 * 1024 + 1)}}, "translations.en"),
        ("ok", {"translations": {"en": "Hi {{who}}"}}, "translations.en"),
    ],
)
async def test_validation_limits(
    api: httpx.AsyncClient, prefix: str, key: str, overrides: dict[str, Any], field: str
) -> None:
    target = key if len(key) > 255 else f"{prefix}.{key}"
    resp = await api.put(f"{MESSAGES}/{target}", json=body(**overrides), headers=ADMIN)
    assert resp.status_code == 400, resp.text
    assert resp.json()["errors"][0]["field"] == field


async def test_resolve(api: httpx.AsyncClient, prefix: str) -> None:
    await api.put(f"{MESSAGES}/{prefix}.hi", json=body(), headers=ADMIN)
    await api.put(
        f"{MESSAGES}/{prefix}.raw",
        json=body(translations={"en": "<b>{{name}}</b>"}, escapeHtml=False),
        headers=ADMIN,
    )
    resp = await api.post(
        f"{MESSAGES}/resolve",
        json={
            "keys": [f"{prefix}.hi", f"{prefix}.raw", f"{prefix}.nope"],
            "language": "fr-CA",
            "variables": {"name": "<script>"},
        },
    )
    assert resp.status_code == 200, resp.text
    found = resp.json()["messages"]
    assert found[f"{prefix}.hi"] == {"text": "Bonjour &lt;script&gt;", "language": "fr", "found": True}
    assert found[f"{prefix}.raw"] == {"text": "<b><script></b>", "language": "en", "found": True}
    assert found[f"{prefix}.nope"] == {"text": f"{prefix}.nope", "language": None, "found": False}
    too_many = await api.post(f"{MESSAGES}/resolve", json={"keys": [f"k{i}" for i in range(1001)]})
    assert too_many.status_code == 400
