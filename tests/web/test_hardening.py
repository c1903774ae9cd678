"""REST hardening: security headers, CORS, the docs toggle, internal routes, and answers that leak nothing.

The service runs in ``required`` auth mode here (as every deployment but ``make run``): callers show a
test token (tests/auth_support.py).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import httpx
import pytest

from common_operations.bootstrap import Runtime
from common_operations.config import Settings
from common_operations.domain.errors import ServiceUnavailable
from common_operations.domain.principal import Principal
from common_operations.domain.task import CreateTask
from common_operations.web.app import create_app
from common_operations.web.security import API_CSP, DOCS_CSP
from tests.auth_support import auth_settings, bearer
from tests.web.support import TASKS, assert_problem

ADMIN = bearer("hardening-admin", ["admin"])
OPERATOR = bearer("hardening-operator", ["operator"])
USER = bearer("hardening-user")

# What an answer must never carry: internal addresses, DSNs, tracebacks.
LEAKS = ("127.0.0.1:", "('127.0.0.1'", "postgresql://", "redis://", "Traceback", "s3cr3t", "10.1.2.3")


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """The test's settings in required auth mode, with a Redis nobody listens to (a real outage)."""
    settings.auth = settings.auth.model_validate(auth_settings("required"))
    settings.redis_url = "redis://127.0.0.1:1/0"
    return settings


AppClient = Callable[..., Any]


@pytest.fixture
def client(runtime: Runtime) -> Callable[..., Any]:
    """A client factory: the REST app built on the runtime with ``http`` settings changed."""

    @asynccontextmanager
    async def make(**http: Any) -> AsyncIterator[httpx.AsyncClient]:
        runtime.settings.http = runtime.settings.http.model_copy(update=http)
        transport = httpx.ASGITransport(app=create_app(runtime))  # type: ignore[arg-type]
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver.local") as api:
            yield api

    return make


def _assert_security_headers(resp: httpx.Response, csp: str = API_CSP) -> None:
    headers = resp.headers
    assert headers["x-content-type-options"] == "nosniff"
    assert headers["x-frame-options"] == "DENY"
    assert headers["referrer-policy"] == "no-referrer"
    assert headers["cross-origin-opener-policy"] == "same-origin"
    assert headers["cross-origin-resource-policy"] == "same-origin"
    assert headers["content-security-policy"] == csp
    assert "strict-transport-security" not in headers  # plain HTTP: HSTS only over TLS (test_tls)
    assert "server" not in headers or "uvicorn" not in headers["server"]


async def test_every_answer_carries_the_security_headers(client: AppClient) -> None:
    async with client() as api:
        listed = await api.get(TASKS, headers=ADMIN)
        assert listed.status_code == 200, listed.text
        _assert_security_headers(listed)
        assert listed.headers["cache-control"] == "no-store"

        refused = await api.get(TASKS)
        assert_problem(refused, 401, "UNAUTHENTICATED")
        _assert_security_headers(refused)
        assert refused.headers["cache-control"] == "no-store"

        unmatched = await api.get("/no/such/route")
        assert unmatched.status_code == 404
        _assert_security_headers(unmatched)

        live = await api.get("/health/live")
        assert live.status_code == 200
        _assert_security_headers(live)

        docs = await api.get("/docs")
        assert docs.status_code == 200 and "swagger" in docs.text.lower()
        _assert_security_headers(docs, DOCS_CSP)
        # Swagger UI comes from the package (no CDN), so the policy allows this origin's scripts only.
        assert "/console/static/vendor/swagger-ui/swagger-ui-bundle.js" in docs.text
        assert "https://" not in docs.text and "<script>" not in docs.text
        assert "'unsafe-inline'" not in DOCS_CSP and "https:" not in DOCS_CSP


async def test_cors_is_off_unless_origins_are_configured(client: AppClient) -> None:
    preflight = {
        "origin": "https://evil.example",
        "access-control-request-method": "POST",
        "access-control-request-headers": "authorization, content-type",
    }
    async with client() as api:
        for resp in (
            await api.options(TASKS, headers=preflight),
            await api.get(TASKS, headers={**ADMIN, "origin": "https://evil.example"}),
        ):
            assert "access-control-allow-origin" not in resp.headers, resp.headers

    async with client(cors_origins=["https://admin.example"]) as api:
        allowed = await api.options(TASKS, headers={**preflight, "origin": "https://admin.example"})
        assert allowed.status_code in (200, 204), allowed.text
        assert allowed.headers["access-control-allow-origin"] == "https://admin.example"
        got = await api.get(TASKS, headers={**ADMIN, "origin": "https://admin.example"})
        assert got.headers["access-control-allow-origin"] == "https://admin.example"
        assert "retry-after" in got.headers["access-control-expose-headers"].lower()
        other = await api.options(TASKS, headers=preflight)
        assert other.headers.get("access-control-allow-origin") != "https://evil.example"
        other_get = await api.get(TASKS, headers={**ADMIN, "origin": "https://evil.example"})
        assert other_get.headers.get("access-control-allow-origin") in (None, "https://admin.example")


async def test_docs_can_be_turned_off(client: AppClient) -> None:
    async with client(docs=False) as api:
        for path in ("/docs", "/docs/", "/docs/openapi.json", "/docs/openapi.yaml"):
            resp = await api.get(path, headers=ADMIN)
            assert resp.status_code == 404, (path, resp.status_code)
        assert (await api.get(TASKS, headers=ADMIN)).status_code == 200


async def test_internal_routes_need_an_internal_role(client: AppClient) -> None:
    async with client() as api:
        for path in ("/metrics", "/health/detailed"):
            assert_problem(await api.get(path), 401, "UNAUTHENTICATED")
            assert_problem(await api.get(path, headers=USER), 403, "PERMISSION_DENIED")
            assert_problem(await api.get(path, headers=bearer("svc", ["service"])), 403, "PERMISSION_DENIED")
            for who in (ADMIN, OPERATOR):
                resp = await api.get(path, headers=who)
                assert resp.status_code == 200, (path, resp.text)
        assert "common_operations_http_requests_total" in (await api.get("/metrics", headers=ADMIN)).text
        # The probes of orchestrators stay public.
        for path in ("/health", "/health/ready", "/health/live"):
            assert (await api.get(path)).status_code == 200, path


async def test_internal_roles_empty_leaves_them_open(client: AppClient) -> None:
    async with client(internal_roles=[]) as api:
        assert (await api.get("/metrics")).status_code == 200
        assert (await api.get("/health/detailed")).status_code == 200


async def test_health_detailed_names_no_address_while_services_are_down(
    client: AppClient, runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def postgres_down() -> None:
        raise OSError("Multiple exceptions: [Errno 111] Connect call failed ('127.0.0.1', 5432)")

    async def temporal_down() -> None:
        raise ServiceUnavailable("cannot reach Temporal at 10.1.2.3:7233: tcp connect error")

    monkeypatch.setattr(runtime.repository, "ping", postgres_down)
    monkeypatch.setattr(runtime.workflows, "ping", temporal_down)
    async with client() as api:
        resp = await api.get("/health/detailed", headers=ADMIN)
    assert resp.status_code == 503, resp.text
    components = resp.json()["components"]
    assert components["database"] == "down: unreachable (OSError)"
    # The service's own finding is shown, without the address it quotes.
    assert components["temporal"] == "down: cannot reach Temporal at <address>: tcp connect error"
    # Redis really is unreachable (settings): its client's own message names host and port.
    assert components["redis"].startswith("down: ")
    for leak in LEAKS:
        assert leak not in resp.text, resp.text


async def test_errors_leak_no_sql_address_or_traceback(
    client: AppClient, runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def lost(*args: object, **kwargs: object) -> None:
        raise asyncpg.exceptions.ConnectionDoesNotExistError(
            "connection to 127.0.0.1:5432 was closed in the middle of operation"
        )

    async def bug(*args: object, **kwargs: object) -> None:
        raise RuntimeError(
            "SELECT * FROM tasks WHERE id = $1 failed on postgresql://svc:s3cr3t@10.1.2.3:5432/ops"
        )

    async def temporal_gone(*args: object, **kwargs: object) -> None:
        raise ServiceUnavailable("cannot reach Temporal at 10.1.2.3:7233: Connection refused")

    task = await runtime.tasks.create_task(Principal("leaks"), CreateTask("process", "product", "leaks"))
    task_id = str(task.id)
    async with client() as api:
        for method in ("get", "get_versioned"):  # with and without the task cache
            monkeypatch.setattr(runtime.repository, method, lost)
        outage = assert_problem(
            await api.get(f"{TASKS}/{task_id}", headers=ADMIN), 503, "SERVICE_UNAVAILABLE"
        )
        for method in ("get", "get_versioned"):  # with and without the task cache
            monkeypatch.setattr(runtime.repository, method, bug)
        internal = assert_problem(await api.get(f"{TASKS}/{task_id}", headers=ADMIN), 500, "INTERNAL")
        for method in ("get", "get_versioned"):  # with and without the task cache
            monkeypatch.setattr(runtime.repository, method, temporal_gone)
        temporal = assert_problem(
            await api.get(f"{TASKS}/{task_id}", headers=ADMIN), 503, "SERVICE_UNAVAILABLE"
        )
    assert "Temporal" in temporal["detail"]
    for body in (outage, internal, temporal):
        text = str(body)
        for leak in (*LEAKS, "SELECT", "10.1.2.3", "7233", "5432"):
            assert leak not in text, text
