"""The console where credentials are required (``auth.mode: required``): login first."""

from __future__ import annotations

import uuid

import httpx
import pytest

from common_operations.config import AuthSettings, Settings
from tests.auth_support import auth_settings, bearer, token
from tests.web.support import TASKS


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """The session's settings with credentials required (no dev-mode local admin)."""
    return settings.model_copy(update={"auth": AuthSettings(**auth_settings("required"))})


async def test_pages_send_the_browser_to_login_and_the_cookie_lets_it_in(http: httpx.AsyncClient) -> None:
    who = f"dave-{uuid.uuid4().hex[:8]}"
    created = await http.post(TASKS, json={"taskType": "process"}, headers=bearer(who))
    assert created.status_code == 201, created.text
    task_id = created.json()["task"]["id"]

    page = await http.get(f"/console/tasks/{task_id}")
    assert page.status_code == 303
    assert page.headers["location"] == f"/console/login?next=%2Fconsole%2Ftasks%2F{task_id}"
    fragment = await http.get("/console", headers={"hx-request": "true", "hx-target": "task-table"})
    assert fragment.headers["hx-redirect"].startswith("/console/login")
    assert (await http.get("/console/login")).status_code == 200
    assert (await http.get(f"{TASKS}/{task_id}/stream")).status_code == 401

    login = await http.post(
        "/console/login",
        data={"credential": token(who), "next": f"/console/tasks/{task_id}"},
        headers={"sec-fetch-site": "same-origin"},
    )
    assert login.status_code == 303 and login.headers["location"] == f"/console/tasks/{task_id}"
    # httpx keeps the cookie: the page, and the SSE stream the page opens, now work as dave.
    shown = await http.get(f"/console/tasks/{task_id}")
    assert shown.status_code == 200 and who in shown.text
    async with http.stream("GET", f"{TASKS}/{task_id}/stream") as stream:
        assert stream.status_code == 200
        assert stream.headers["content-type"].startswith("text/event-stream")
