"""The console over plain HTTP (no browser needed): the session cookie, form guards, headers.

These run wherever the live server runs, Chromium or not.
"""

from __future__ import annotations

import uuid

import httpx

from common_operations.web.console.auth import COOKIE_NAME
from common_operations.web.security import DOCS_CSP
from tests.auth_support import bearer, token
from tests.web.support import TASKS, assert_problem, create


async def test_the_session_cookie_stands_for_its_credential(http: httpx.AsyncClient) -> None:
    alice, bob = f"alice-{uuid.uuid4().hex[:8]}", f"bob-{uuid.uuid4().hex[:8]}"
    await create(http, f"op-{uuid.uuid4().hex[:8]}", requestedBy=alice)
    await create(http, f"op-{uuid.uuid4().hex[:8]}", requestedBy=bob)

    as_alice = {"cookie": f"{COOKIE_NAME}=bearer:{token(alice)}"}
    mine = (await http.get(TASKS, params={"pageSize": 100}, headers=as_alice)).json()["tasks"]
    assert {t["requestedBy"] for t in mine} == {alice}
    # alice asking for bob's tasks gets an empty page: the cookie is alice, not the dev admin.
    theirs = await http.get(TASKS, params={"requestedBy": bob}, headers=as_alice)
    assert theirs.json()["tasks"] == []

    # A header beats the cookie (a script sending its own token means that one).
    both = await http.get(TASKS, params={"pageSize": 100}, headers={**as_alice, **bearer(bob)})
    assert {t["requestedBy"] for t in both.json()["tasks"]} == {bob}

    # A cookie that does not verify is refused like its header would be, even in dev mode.
    forged = {"cookie": f"{COOKIE_NAME}=bearer:not.a.token"}
    assert_problem(await http.get(TASKS, headers=forged), 401, "UNAUTHENTICATED")
    # A cookie value the console did not write is ignored (the dev admin, as without a cookie).
    assert (await http.get(TASKS, headers={"cookie": f"{COOKIE_NAME}=junk"})).status_code == 200


async def test_login_keeps_the_credential_in_an_httponly_strict_cookie(http: httpx.AsyncClient) -> None:
    who = f"carol-{uuid.uuid4().hex[:8]}"
    form = {"credential": f"Bearer {token(who)}", "next": "https://evil.example/steal"}
    resp = await http.post("/console/login", data=form, headers={"sec-fetch-site": "same-origin"})
    assert resp.status_code == 303
    # Only console paths are followed after login: no open redirect.
    assert resp.headers["location"] == "/console"
    cookie = resp.headers["set-cookie"]
    assert cookie.startswith(f"{COOKIE_NAME}=bearer:")
    for attribute in ("HttpOnly", "SameSite=Strict", "Path=/"):
        assert attribute.lower() in cookie.lower(), cookie

    refused = await http.post("/console/login", data={"credential": "Bearer nope"})
    assert refused.status_code == 401 and "set-cookie" not in refused.headers
    assert "credential" in refused.text

    out = await http.post("/console/logout")
    assert out.status_code == 303 and "max-age=0" in out.headers["set-cookie"].lower()


async def test_console_forms_refuse_other_sites(http: httpx.AsyncClient) -> None:
    task = await create(http, f"op-{uuid.uuid4().hex[:8]}")
    cancel = f"/console/tasks/{task['id']}/cancel"
    # dev mode: no credentials = the local admin, so another site's form must not get through.
    for headers in ({"sec-fetch-site": "cross-site"}, {"origin": "https://evil.example"}):
        resp = await http.post(cancel, data={"reason": "csrf"}, headers=headers)
        assert resp.status_code == 403, (headers, resp.status_code)
        assert "PERMISSION_DENIED" in resp.text
    assert (await http.get(f"{TASKS}/{task['id']}")).json()["task"]["status"] == "pending"

    same = await http.post(cancel, data={"reason": "ok"}, headers={"sec-fetch-site": "same-origin"})
    assert same.status_code == 200 and 'data-status="cancelled"' in same.text


async def test_console_and_docs_headers_and_assets(http: httpx.AsyncClient) -> None:
    page = await http.get("/console")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    csp = page.headers["content-security-policy"]
    assert "script-src 'self';" in csp and "style-src 'self';" in csp and "form-action 'self'" in csp
    assert "unsafe" not in csp and "https:" not in csp
    assert page.headers["cache-control"] == "no-store"
    assert page.headers["x-frame-options"] == "DENY"

    for path in (
        "/console/static/vendor/htmx/htmx.min.js",
        "/console/static/console.js",
        "/console/static/docs.js",
        "/console/static/vendor/swagger-ui/swagger-ui-bundle.js",
        "/console/static/vendor/swagger-ui/swagger-ui.css",
    ):
        asset = await http.get(path)
        assert asset.status_code == 200, path
        assert "javascript" in asset.headers["content-type"] or "css" in asset.headers["content-type"]

    docs = await http.get("/docs")
    assert docs.headers["content-security-policy"] == DOCS_CSP
    assert 'data-spec-url="/docs/openapi.json"' in docs.text
    spec = (await http.get("/docs/openapi.json")).json()
    assert not [p for p in spec["paths"] if p.startswith("/console")], "console pages are not API"

    # Errors of console pages are pages too.
    missing = await http.get(f"/console/tasks/{uuid.uuid4()}")
    assert missing.status_code == 404 and "TASK_NOT_FOUND" in missing.text
    assert missing.headers["content-type"].startswith("text/html")
    bad = await http.get("/console", params={"startDate": "yesterday"})
    assert bad.status_code == 400 and "startDate" in bad.text
