"""Roles × operations × ownership through REST: the table of tests/authz_table.py, and no leaks.

The test runtime is in ``dev`` auth mode: a request with a test token is that token's principal.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import httpx
import pytest

from common_operations.bootstrap import Runtime
from common_operations.config import Settings
from tests.auth_support import bearer
from tests.authz_table import (
    DENIED,
    EXPECTED,
    EXPECTED_CREATE,
    EXPECTED_LIST,
    HIDDEN,
    NARROW,
    NARROW_REPORTER,
    OK,
    OPS,
    ROLES,
    WHOSE,
    audit_rows,
    cast,
    differences,
    prepared,
    roles_of,
    with_narrow_type,
)
from tests.web.support import TASKS, assert_problem

# What an allowed operation answers on the prepared task (download: the task has no file yet;
# retry-failed-rows: a `process` task is not an import, which is checked after authorization).
SUCCESS = {
    "get": (200, None),
    "logs": (200, None),
    "events": (200, None),
    "download": (409, "NOT_AVAILABLE"),
    "cancel": (200, None),
    "retry": (200, None),
    "retry_failed_rows": (409, "INVALID_TRANSITION"),
    "delete": (200, None),
    "progress": (200, None),
}


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """The test settings with a type only one service reports on."""
    return with_narrow_type(settings)


async def call(api: httpx.AsyncClient, op: str, task_id: str, headers: dict[str, str]) -> httpx.Response:
    """Send ``op`` on ``task_id`` with ``headers``."""
    path = f"{TASKS}/{task_id}"
    if op == "get":
        return await api.get(path, headers=headers)
    if op in ("logs", "events", "download"):
        return await api.get(f"{path}/{op}", headers=headers)
    if op == "cancel":
        return await api.post(f"{path}/cancel", json={"reason": "table"}, headers=headers)
    if op == "retry":
        return await api.post(f"{path}/retry", headers=headers)
    if op == "retry_failed_rows":
        return await api.post(f"{path}/retry-failed-rows", headers=headers)
    if op == "delete":
        return await api.delete(path, headers=headers)
    assert op == "progress"
    return await api.patch(
        f"{path}/progress", json={"totalRecords": 10, "processedRecords": 1}, headers=headers
    )


def outcome(op: str, resp: httpx.Response) -> str:
    """ok / 403 / 404, or what else came back."""
    status, code = SUCCESS[op]
    if resp.status_code == status and (code is None or resp.json().get("code") == code):
        return OK
    if resp.status_code == 404 and resp.json().get("code") == "TASK_NOT_FOUND":
        return HIDDEN
    if resp.status_code == 403 and resp.json().get("code") == "PERMISSION_DENIED":
        return DENIED
    return f"{resp.status_code} {resp.text[:200]}"


@pytest.mark.parametrize("role", ROLES)
async def test_the_table(api: httpx.AsyncClient, runtime: Runtime, role: str) -> None:
    """Every operation × own / another's / an unreported type's task gives the table's answer."""
    who = cast(role)
    headers = bearer(who.subject, roles_of(role))
    actual: dict[str, dict[str, str]] = {op: {} for op in OPS}
    for whose in WHOSE:
        for op in OPS:
            task = await prepared(runtime, who, whose, op)
            actual[op][whose] = outcome(op, await call(api, op, str(task.id), headers))
    assert differences(actual, EXPECTED[role]) == []


@pytest.mark.parametrize("role", ROLES)
async def test_create_and_list(api: httpx.AsyncClient, runtime: Runtime, role: str) -> None:
    """Who may name another requester, and whose tasks a requester filter shows."""
    who = cast(role)
    headers = bearer(who.subject, roles_of(role))
    created = {}
    for whose, requested_by in (("own", None), ("other", who.stranger)):
        body: dict[str, Any] = {"taskType": "process", "entityType": "product"}
        if requested_by:
            body["requestedBy"] = requested_by
        resp = await api.post(TASKS, json=body, headers=headers)
        created[whose] = OK if resp.status_code == 201 else outcome("get", resp)
        if resp.status_code == 201:
            task = resp.json()["task"]
            assert task["requestedBy"] == requested_by or who.subject
    assert created == EXPECTED_CREATE[role]

    others = {
        "other": await prepared(runtime, who, "other", "get"),
        "unreported": await prepared(runtime, who, "unreported", "get"),
    }
    resp = await api.get(TASKS, params={"requestedBy": who.stranger, "pageSize": 100}, headers=headers)
    assert resp.status_code == 200, resp.text
    seen = {t["id"] for t in resp.json()["tasks"]}
    assert {whose for whose, task in others.items() if str(task.id) in seen} == EXPECTED_LIST[role]


async def test_no_cross_principal_read(api: httpx.AsyncClient, runtime: Runtime) -> None:
    """Another user's task is answered exactly like a missing one, on every read and in lists."""
    alice, bob = cast("user"), cast("user")
    task = await prepared(runtime, alice, "own", "get")
    missing = str(uuid.uuid4())
    reads: list[tuple[str, dict[str, str]]] = [("", {}), ("/logs", {}), ("/events", {})] + [
        ("/download", {"file": file}) for file in ("output", "result", "input")
    ]
    for suffix, params in reads:
        hidden = await api.get(f"{TASKS}/{task.id}{suffix}", params=params, headers=bearer(bob.subject))
        absent = await api.get(f"{TASKS}/{missing}{suffix}", params=params, headers=bearer(bob.subject))
        body = assert_problem(hidden, 404, "TASK_NOT_FOUND")
        assert json.loads(json.dumps(body).replace(str(task.id), missing)) == absent.json(), suffix
        assert hidden.headers.keys() == absent.headers.keys()
    listed = await api.get(TASKS, params={"requestedBy": alice.subject}, headers=bearer(bob.subject))
    assert listed.json()["tasks"] == [] and listed.json()["total"] == 0
    mine = await api.get(TASKS, headers=bearer(alice.subject))
    assert [t["id"] for t in mine.json()["tasks"]] == [str(task.id)]


async def test_reports_come_only_from_reporters(api: httpx.AsyncClient, runtime: Runtime) -> None:
    """An end user's report on its own task: 403, task unchanged; the type's reporter: accepted."""
    alice = cast("user")
    resp = await api.post(TASKS, json={"taskType": NARROW, "entityType": "p"}, headers=bearer(alice.subject))
    task_id = resp.json()["task"]["id"]
    done = {"totalRecords": 1, "processedRecords": 1, "successRecords": 1, "isCompleted": True}
    refused = await api.patch(f"{TASKS}/{task_id}/progress", json=done, headers=bearer(alice.subject))
    body = assert_problem(refused, 403, "PERMISSION_DENIED")
    assert "an end user can never complete a task with a report" in body["detail"]
    unchanged = (await api.get(f"{TASKS}/{task_id}", headers=bearer(alice.subject))).json()["task"]
    assert (unchanged["status"], unchanged["processedRecords"]) == ("pending", 0)

    # A service the type does not name: someone else's task is hidden, its own refused.
    stranger = bearer(f"svc-{uuid.uuid4().hex[:8]}", ["service"])
    assert_problem(
        await api.patch(f"{TASKS}/{task_id}/progress", json=done, headers=stranger), 404, "TASK_NOT_FOUND"
    )
    own = await api.post(TASKS, json={"taskType": NARROW, "entityType": "p"}, headers=stranger)
    own_id = own.json()["task"]["id"]
    assert_problem(
        await api.patch(f"{TASKS}/{own_id}/progress", json=done, headers=stranger), 403, "PERMISSION_DENIED"
    )

    accepted = await api.patch(
        f"{TASKS}/{task_id}/progress", json=done, headers=bearer(NARROW_REPORTER, ["service"])
    )
    assert accepted.status_code == 200, accepted.text
    assert accepted.json()["task"]["status"] == "completed"


async def test_a_service_creates_on_behalf_of_a_user(api: httpx.AsyncClient) -> None:
    """requestedBy names the user, the created event says who acted for whom."""
    tag = uuid.uuid4().hex[:8]
    svc, user = f"svc-{tag}", f"user-{tag}"
    resp = await api.post(
        TASKS,
        json={"taskType": "process", "entityType": "p", "requestedBy": user},
        headers=bearer(svc, ["service"]),
    )
    assert resp.status_code == 201, resp.text
    task_id = resp.json()["task"]["id"]
    assert resp.json()["task"]["requestedBy"] == user
    events = await api.get(f"{TASKS}/{task_id}/events", headers=bearer(user))
    created = events.json()["events"][0]
    assert created["eventType"] == "task.created"
    payload = created["payload"]
    assert (payload["onBehalfOf"], payload["createdBy"]) == (user, svc)

    refused = await api.post(
        TASKS, json={"taskType": "process", "entityType": "p", "requestedBy": svc}, headers=bearer(user)
    )
    assert_problem(refused, 403, "PERMISSION_DENIED")


async def test_deletes_and_anothers_cancel_are_audited(api: httpx.AsyncClient, runtime: Runtime) -> None:
    """task.delete for a delete, task.cancel when an operator cancels a user's task."""
    alice = cast("user")
    final = await prepared(runtime, alice, "own", "delete")
    assert (await api.delete(f"{TASKS}/{final.id}", headers=bearer(alice.subject))).status_code == 200
    rows = await audit_rows(runtime, str(final.id))
    # The setup's cancellation is not recorded: the setup created the task, so it is its own too.
    assert [(r["actor"], r["action"]) for r in rows] == [(alice.subject, "task.delete")]

    task = await prepared(runtime, alice, "own", "cancel")
    operator = f"op-{uuid.uuid4().hex[:8]}"
    resp = await api.post(
        f"{TASKS}/{task.id}/cancel", json={"reason": "stuck"}, headers=bearer(operator, ["operator"])
    )
    assert resp.status_code == 200, resp.text
    (row,) = await audit_rows(runtime, str(task.id))
    assert (row["actor"], row["action"]) == (operator, "task.cancel")
    assert json.loads(row["metadata"])["owner"] == alice.subject
