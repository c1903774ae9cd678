"""Helpers of the REST tests: create, read and report through HTTP, and check problem details."""

from __future__ import annotations

from typing import Any

import httpx
from httpx import Response

from tests.auth_support import bearer
from tests.helpers import assert_eventually

TASKS = "/api/v1/operations/tasks"
Client = httpx.AsyncClient


def caller(who: str) -> dict[str, str]:
    """Headers of a verified caller ``who`` with the operator and service roles (a test token).

    Operator: it reads and changes any task; service: it may create tasks for another requester
    (``requestedBy``), which the tests do to share a requester between callers.
    """
    return bearer(who, ["operator", "service"])


async def create(api: Client, who: str, **body: Any) -> dict[str, Any]:
    """Create a task as ``who`` (``taskType`` defaults to ``process``) and return it."""
    body.setdefault("taskType", "process")
    resp = await api.post(TASKS, json=body, headers=caller(who))
    assert resp.status_code == 201, resp.text
    task: dict[str, Any] = resp.json()["task"]
    return task


async def get(api: Client, task_id: str) -> dict[str, Any]:
    """The task as GET shows it."""
    resp = await api.get(f"{TASKS}/{task_id}")
    assert resp.status_code == 200, resp.text
    task: dict[str, Any] = resp.json()["task"]
    return task


async def report(api: Client, task_id: str, **body: Any) -> Response:
    """PATCH a progress report."""
    return await api.patch(f"{TASKS}/{task_id}/progress", json=body)


async def reported(api: Client, task_id: str, **body: Any) -> dict[str, Any]:
    """PATCH a progress report that must be accepted; the task it returns."""
    resp = await report(api, task_id, **body)
    assert resp.status_code == 200, resp.text
    task: dict[str, Any] = resp.json()["task"]
    return task


async def eventually_status(api: Client, task_id: str, status: str, timeout: float = 20.0) -> dict[str, Any]:
    """Poll GET until the task reaches ``status``."""
    return await assert_eventually(
        lambda: get(api, task_id), lambda t: t["status"] == status, timeout=timeout
    )


def assert_problem(resp: Response, status: int, code: str) -> dict[str, Any]:
    """The response is an RFC 9457 problem with ``status`` and ``code``; returns its body."""
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith("application/problem+json"), resp.headers
    body: dict[str, Any] = resp.json()
    assert body["status"] == status
    assert body["code"] == code, body
    assert body["type"] and body["title"] and body["detail"]
    return body
