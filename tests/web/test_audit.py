"""GET /api/v1/admin/audit: admins page through the audit log by entity or actor; everyone else is
refused; bad filters are 400 problems; the endpoint takes the admin rate limit."""

from __future__ import annotations

import uuid
from typing import Any

import httpx

from common_operations.bootstrap import Runtime
from common_operations.config import LimitSettings, RateLimit
from common_operations.infra.rate_limit import RateLimiter
from common_operations.services.limits import TaskLimits
from tests.auth_support import bearer
from tests.web.support import TASKS, assert_problem

AUDIT = "/api/v1/admin/audit"
MESSAGES = "/api/v1/messages"
ENTRY_KEYS = {
    "id", "actor", "actorRoles", "action", "entityType", "entityId", "oldState", "newState", "metadata",
    "createdAt",
}  # fmt: skip


def an_admin() -> tuple[str, dict[str, str]]:
    subject = f"audit-web-{uuid.uuid4().hex[:10]}"
    return subject, bearer(subject, ["admin"])


def message(category: str = "email") -> dict[str, Any]:
    return {
        "category": category,
        "defaultLanguage": "en",
        "translations": {"en": "Hi {{name}}"},
        "variables": ["name"],
    }


async def test_admins_see_message_changes_newest_first(api: httpx.AsyncClient) -> None:
    subject, admin = an_admin()
    key = f"audit.{uuid.uuid4().hex[:10]}"
    assert (await api.put(f"{MESSAGES}/{key}", json=message(), headers=admin)).status_code == 200
    assert (await api.put(f"{MESSAGES}/{key}", json=message("sms"), headers=admin)).status_code == 200
    assert (await api.delete(f"{MESSAGES}/{key}", headers=admin)).status_code == 200

    resp = await api.get(AUDIT, params={"entityType": "message", "entityId": key}, headers=admin)
    assert resp.status_code == 200, resp.text
    page = resp.json()
    assert set(page) == {"items", "total", "page", "pageSize"}
    assert page["total"] == 3 and page["page"] == 1 and page["pageSize"] == 50
    items = page["items"]
    assert all(set(item) == ENTRY_KEYS for item in items)
    assert [i["action"] for i in items] == ["message.delete", "message.upsert", "message.upsert"]
    assert items[0]["id"] > items[1]["id"] > items[2]["id"]
    assert {i["actor"] for i in items} == {subject} and items[0]["actorRoles"] == ["admin"]
    assert items[0]["oldState"]["category"] == "sms" and items[0]["newState"] is None
    assert items[1]["oldState"]["category"] == "email" and items[1]["newState"]["category"] == "sms"
    assert items[0]["metadata"]["via"] == "jwt"

    by_actor = (await api.get(AUDIT, params={"actor": subject, "pageSize": 2}, headers=admin)).json()
    assert by_actor["total"] == 3 and len(by_actor["items"]) == 2
    rest = await api.get(
        AUDIT, params={"actor": subject, "before": by_actor["items"][-1]["id"]}, headers=admin
    )
    assert [i["id"] for i in rest.json()["items"]] == [items[2]["id"]]
    upserts = await api.get(AUDIT, params={"actor": subject, "action": "message.upsert"}, headers=admin)
    assert upserts.json()["total"] == 2


async def test_a_task_delete_is_found_by_the_task(api: httpx.AsyncClient) -> None:
    subject, admin = an_admin()
    user = bearer(f"audit-user-{uuid.uuid4().hex[:8]}")
    created = await api.post(TASKS, json={"taskType": "process", "entityType": "product"}, headers=user)
    task_id = created.json()["task"]["id"]
    assert (await api.post(f"{TASKS}/{task_id}/cancel", headers=user)).status_code == 200
    assert (await api.delete(f"{TASKS}/{task_id}", headers=admin)).status_code == 200

    entries = (await api.get(AUDIT, params={"entityType": "task", "entityId": task_id}, headers=admin)).json()
    actions = [(i["action"], i["actor"]) for i in entries["items"]]
    assert ("task.delete", subject) in actions


async def test_only_admins_read_the_audit_log(api: httpx.AsyncClient) -> None:
    for roles in ([], ["operator"], ["service"], ["viewer"]):
        headers = bearer(f"not-admin-{uuid.uuid4().hex[:8]}", roles)
        assert_problem(await api.get(AUDIT, headers=headers), 403, "PERMISSION_DENIED")
        # Refused before its filters are looked at: a bad one is still 403, not 400.
        assert_problem(
            await api.get(AUDIT, params={"pageSize": 0}, headers=headers), 403, "PERMISSION_DENIED"
        )
    # Dev mode (the test settings): no credentials is the local admin.
    assert (await api.get(AUDIT, params={"pageSize": 1})).status_code == 200


async def test_bad_filters_are_400_problems_naming_the_field(api: httpx.AsyncClient) -> None:
    _, admin = an_admin()
    cases: list[tuple[dict[str, Any], str]] = [
        ({"pageSize": 0}, "pageSize"),
        ({"pageSize": 1001}, "pageSize"),
        ({"page": 0}, "page"),
        ({"entityId": "x"}, "entityId"),
        ({"before": -1}, "before"),
        ({"actor": "a" * 256}, "actor"),
        ({"page": "abc"}, "page"),
        ({"before": "not-a-number"}, "before"),
    ]
    for params, field in cases:
        body = assert_problem(await api.get(AUDIT, params=params, headers=admin), 400, "VALIDATION_FAILED")
        assert [e["field"] for e in body["errors"]] == [field], (params, body)


async def test_the_audit_endpoint_takes_the_admin_rate_limit(
    api: httpx.AsyncClient, runtime: Runtime
) -> None:
    previous = runtime.tasks.limits
    runtime.tasks.limits = TaskLimits(
        LimitSettings(enabled=True, rates={"admin": RateLimit(requests=2, per_seconds=60)}),
        limiter=RateLimiter(None),
    )
    try:
        _, admin = an_admin()
        for _ in range(2):
            assert (await api.get(AUDIT, params={"pageSize": 1}, headers=admin)).status_code == 200
        resp = await api.get(AUDIT, params={"pageSize": 1}, headers=admin)
        assert_problem(resp, 429, "RATE_LIMITED")
        assert int(resp.headers["Retry-After"]) > 0
    finally:
        runtime.tasks.limits = previous


async def test_the_endpoint_is_documented_under_admin(api: httpx.AsyncClient) -> None:
    spec = (await api.get("/docs/openapi.json")).json()
    operation = spec["paths"][AUDIT]["get"]
    assert operation["operationId"] == "ListAuditEntries" and operation["tags"] == ["Admin"]
    names = {p["name"] for p in operation["parameters"]}
    assert {"actor", "action", "entityType", "entityId", "before", "page", "pageSize"} <= names
