"""``POST /api/v1/operations/bulk-actions``: operators and admins start one watchable bulk task."""

from __future__ import annotations

from typing import Any

import pytest

from tests.auth_support import bearer
from tests.helpers import assert_eventually
from tests.web.support import TASKS, Client, assert_problem, create, get, reported

BULK = "/api/v1/operations/bulk-actions"


async def _closed(api: Client, task_id: str) -> dict[str, Any]:
    return await assert_eventually(
        lambda: get(api, task_id), lambda t: t["status"] in ("completed", "failed", "cancelled"), timeout=60
    )


async def test_operator_cancels_every_matching_task_as_one_task(api: Client, who: str) -> None:
    targets = [(await create(api, who))["id"] for _ in range(3)]
    started = await create(api, who)
    await reported(api, started["id"], totalRecords=5, processedRecords=1)
    targets.append(started["id"])
    operator = bearer(f"{who}-op", ["operator"])

    resp = await api.post(
        BULK,
        json={"action": "cancel", "filter": {"taskType": "process", "requestedBy": who}, "reason": "freeze"},
        headers=operator,
    )
    assert resp.status_code == 201, resp.text
    bulk = resp.json()["task"]
    assert bulk["taskType"] == "bulk_action" and bulk["requestedBy"] == f"{who}-op"
    assert bulk["paramsObject"] == {
        "action": "cancel",
        "filter": {"taskType": "process", "requestedBy": who},
        "reason": "freeze",
    }

    final = await _closed(api, bulk["id"])
    assert final["status"] == "completed", final
    assert [final[k] for k in ("totalRecords", "processedRecords", "successRecords", "failedRecords")] == [
        4,
        4,
        4,
        0,
    ]
    for task_id in targets:
        assert (await get(api, task_id))["status"] == "cancelled"
    # The bulk task is listed like any other task of its type.
    listed = await api.get(TASKS, params={"taskType": "bulk_action", "requestedBy": f"{who}-op"})
    assert [t["id"] for t in listed.json()["tasks"]] == [bulk["id"]]


@pytest.mark.parametrize("roles", [[], ["viewer"], ["service"]], ids=["user", "viewer", "service"])
async def test_other_roles_get_403(api: Client, who: str, roles: list[str]) -> None:
    resp = await api.post(
        BULK, json={"action": "cancel", "filter": {"requestedBy": who}}, headers=bearer(who, roles)
    )
    problem = assert_problem(resp, 403, "PERMISSION_DENIED")
    assert "operator" in problem["detail"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"action": "delete", "filter": {"taskType": "process"}}, "action"),
        ({"action": "cancel", "filter": {}}, "filter.taskType"),
        ({"action": "retry", "filter": {"taskType": "process", "status": "pending"}}, "filter.status"),
        ({"action": "cancel", "filter": {"taskType": "process", "status": "nope"}}, "status"),
    ],
)
async def test_bad_bodies_are_400(api: Client, body: dict[str, Any], field: str) -> None:
    problem = assert_problem(await api.post(BULK, json=body), 400, "VALIDATION_FAILED")
    assert any(e.get("field") == field for e in problem.get("errors", [])) or problem.get("field") == field, (
        problem
    )


async def test_the_operation_is_documented(api: Client) -> None:
    doc = (await api.get("/docs/openapi.json")).json()
    operation = doc["paths"][BULK]["post"]
    assert operation["operationId"] == "CreateBulkAction"
    assert {"201", "400", "401", "403", "429"} <= set(operation["responses"])
