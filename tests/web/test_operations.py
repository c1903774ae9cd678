"""Operational endpoints: health probes, metrics, OpenAPI docs, unknown routes, stubs, the server."""

from __future__ import annotations

import asyncio
import socket

import httpx
import pytest
import yaml

from common_operations.bootstrap import Runtime
from common_operations.services.tasks import HealthReport
from common_operations.web.server import serve_http
from tests.auth_support import bearer
from tests.helpers import assert_eventually
from tests.web.support import TASKS, Client, assert_problem

OPERATION_IDS = {
    "CreateTask", "GetTask", "ListTasks", "CancelTask", "RetryTask", "UpdateTaskProgress",
    "GetDownloadUrl", "GetTaskLogs", "GetTaskEvents", "DeleteTask", "Health",
}  # fmt: skip


async def test_health_when_healthy(api: Client, runtime: Runtime, reconciler: None) -> None:
    # /health/detailed reports the reconciler workflow (every worker starts it) and stuck tasks.
    await assert_eventually(runtime.workflows.reconciler_status, lambda s: s.passes >= 1)
    assert (await api.get("/health/live")).json() == {"status": "alive"}
    for path in ("/health", "/health/ready"):
        resp = await api.get(path)
        assert resp.status_code == 200 and resp.json() == {"status": "healthy"}
    for path in ("/health/detailed", "/api/v1/operations/health"):
        resp = await api.get(path)
        assert resp.status_code == 200, resp.text
        body = resp.json()
        assert body["status"] == "healthy"
        assert (body["components"]["database"], body["components"]["temporal"]) == ("up", "up")


async def test_health_when_a_backing_service_is_down(
    api: Client, runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def down() -> HealthReport:
        return HealthReport(False, {"database": "up", "temporal": "down: RPCError: unreachable"})

    monkeypatch.setattr(runtime.tasks, "health", down)
    assert (await api.get("/health/live")).status_code == 200  # liveness ignores backing services
    for path in ("/health", "/health/ready"):
        resp = await api.get(path)
        assert resp.status_code == 503 and resp.json() == {"status": "unhealthy"}
    for path in ("/health/detailed", "/api/v1/operations/health"):
        resp = await api.get(path)
        assert resp.status_code == 503
        assert resp.json()["components"]["temporal"].startswith("down")


async def test_optional_service_down_is_degraded_not_unready(
    api: Client, runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def degraded() -> HealthReport:
        return HealthReport(
            True, {"database": "up", "temporal": "up", "redis": "down: refused"}, degraded=True
        )

    monkeypatch.setattr(runtime.tasks, "health", degraded)
    resp = await api.get("/health/ready")
    assert resp.status_code == 200 and resp.json() == {"status": "degraded"}
    resp = await api.get("/health")  # two-valued, as the seed had it
    assert resp.status_code == 200 and resp.json() == {"status": "healthy"}
    resp = await api.get("/health/detailed")
    assert resp.status_code == 200 and resp.json()["status"] == "degraded"
    resp = await api.get("/api/v1/operations/health")  # two-valued, as gRPC's Health
    assert resp.status_code == 200 and resp.json()["status"] == "healthy"


async def test_metrics_count_requests_by_route_template(api: Client, who: str) -> None:
    await api.get("/health/live")
    await api.get(f"{TASKS}/00000000-0000-4000-8000-000000000000")
    await api.get("/no/such/route")
    resp = await api.get("/metrics")
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/plain")
    text = resp.text
    assert 'common_operations_http_requests_total{method="GET",route="/health/live",status="200"}' in text
    assert (
        'common_operations_http_requests_total{method="GET",route="/api/v1/operations/tasks/{id}",'
        'status="404"}' in text
    )
    assert 'common_operations_http_requests_total{method="GET",route="<unmatched>",status="404"}' in text
    assert (
        'common_operations_http_request_duration_seconds_bucket{le="0.005",method="GET",route="/health/live"'
        in text
    )


async def test_openapi_docs(api: Client) -> None:
    resp = await api.get("/docs")
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/html")
    assert "swagger" in resp.text.lower()

    resp = await api.get("/docs/openapi.yaml")
    assert resp.status_code == 200
    spec = yaml.safe_load(resp.text)
    found = {op["operationId"] for path in spec["paths"].values() for op in path.values()}
    assert found >= OPERATION_IDS
    for operation_id in OPERATION_IDS:
        assert f"operationId: {operation_id}\n" in resp.text

    resp = await api.get("/docs/openapi.json")
    assert resp.status_code == 200
    spec = resp.json()
    create = spec["paths"]["/api/v1/operations/tasks"]["post"]
    assert create["operationId"] == "CreateTask"
    assert "application/problem+json" in create["responses"]["400"]["content"]
    list_params = {p["name"] for p in spec["paths"]["/api/v1/operations/tasks"]["get"]["parameters"]}
    assert {"page", "pageSize", "taskType", "entityType", "status", "requestedBy", "startDate", "endDate",
            "search"} <= list_params  # fmt: skip
    assert "taskType" in spec["components"]["schemas"]["CreateTaskRequest"]["properties"]


async def test_unknown_route_and_wrong_method(api: Client) -> None:
    problem = assert_problem(await api.get("/api/v1/operations/nothing-here"), 404, "NOT_FOUND")
    assert problem["instance"] == "/api/v1/operations/nothing-here"
    resp = await api.put("/health/live")
    assert_problem(resp, 405, "METHOD_NOT_ALLOWED")
    assert "GET" in resp.headers["allow"]


async def test_payment_settings_need_the_admin_role(api: Client) -> None:
    # The settings service is implemented (tests/web/test_settings.py); a plain user gets 403.
    for method in ("GET", "PUT"):
        resp = await api.request(method, "/api/v1/settings/payment", json={}, headers=bearer("bob"))
        assert_problem(resp, 403, "PERMISSION_DENIED")
    assert (await api.get("/api/v1/public/settings/payment")).status_code == 200


async def test_caller_without_credentials_is_the_dev_admin(api: Client) -> None:
    # The test app runs in dev auth mode: no credentials = the local admin (required mode: 401,
    # tests/web/test_authentication.py).
    resp = await api.post(TASKS, json={"taskType": "process"})
    assert resp.status_code == 201, resp.text
    assert resp.json()["task"]["requestedBy"] == "local-admin"
    ignored = await api.post(TASKS, json={"taskType": "process"}, headers={"x-user-id": "mallory"})
    assert ignored.json()["task"]["requestedBy"] == "local-admin"  # x-user-id names nobody any more


async def test_serve_http_answers_and_stops_when_cancelled(runtime: Runtime) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = asyncio.create_task(serve_http(runtime, "127.0.0.1", port))
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:

        async def live() -> int:
            try:
                return (await http.get("/health/live")).status_code
            except httpx.TransportError:
                return 0

        assert await assert_eventually(live, lambda status: status == 200) == 200
        server.cancel()
        with pytest.raises(asyncio.CancelledError):
            await server
        with pytest.raises(httpx.TransportError):
            await http.get("/health/live")
