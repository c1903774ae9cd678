"""Operational health endpoints (``/health``, ``/health/ready``, ``/health/live``, ``/health/detailed``).

``/health`` and ``/health/ready`` show only the overall status (``/health/ready`` says ``degraded``
while Redis is down): component messages can name hosts and errors, which belong behind
``/health/detailed`` (scraped by operators, not load balancers).
"""

from __future__ import annotations

from litestar import Controller, Response, get
from litestar.openapi import ResponseSpec

from common_operations.services.tasks import TaskService
from common_operations.web import mapping
from common_operations.web.dependencies import PUBLIC, Call
from common_operations.web.errors import problem_responses
from common_operations.web.schemas import HealthResponse, LiveResponse
from common_operations.web.security import internal_only

_UNHEALTHY = {503: ResponseSpec(LiveResponse, description="A backing service is down")}
_UNHEALTHY_DETAILED = {
    503: ResponseSpec(HealthResponse, description="A backing service is down"),
    # Only for the roles of http.internal_roles.
    **problem_responses(401, 403),
}


class HealthController(Controller):
    """Probes for orchestrators and operators."""

    path = "/health"
    tags = ["Health"]  # noqa: RUF012 - Litestar reads this class attribute as is

    @get("/", operation_id="HealthCheck", summary="Overall health", responses=_UNHEALTHY, opt=PUBLIC)
    async def health(self, call: Call) -> Response[LiveResponse]:
        """200 when Postgres and Temporal answer, else 503."""
        return await _overall(call.tasks)

    @get(
        "/ready", operation_id="Readiness", summary="Ready to serve traffic", responses=_UNHEALTHY, opt=PUBLIC
    )
    async def ready(self, call: Call) -> Response[LiveResponse]:
        """200 when Postgres and Temporal answer, else 503 (take the instance out of rotation).

        The status reads ``degraded`` (still 200: the instance serves) while an optional service
        (Redis) is down.
        """
        return await _overall(call.tasks, show_degraded=True)

    @get("/live", operation_id="Liveness", summary="The process is running", sync_to_thread=False, opt=PUBLIC)
    def live(self) -> LiveResponse:
        """Always 200: liveness must not depend on backing services, or outages restart every pod."""
        return LiveResponse(status="alive")

    @get(
        "/detailed",
        operation_id="HealthDetailed",
        summary="Health of each backing service",
        responses=_UNHEALTHY_DETAILED,
        # Only principals with one of http.internal_roles (public when that list is empty).
        guards=[internal_only],
        opt=PUBLIC,
    )
    async def detailed(self, call: Call) -> Response[HealthResponse]:
        """Every component's state; 200 while the required ones are up.

        The status reads ``degraded`` when an optional service (Redis) is down. Needs one of the
        roles of ``http.internal_roles`` (by default admin or operator; 401 without credentials).
        """
        report = await call.tasks.health()
        body = mapping.health_response(report, show_degraded=True)
        return Response(body, status_code=200 if report.healthy else 503)


async def _overall(tasks: TaskService, *, show_degraded: bool = False) -> Response[LiveResponse]:
    report = await tasks.health()
    body = mapping.health_response(report, show_degraded=show_degraded)
    return Response(LiveResponse(status=body.status), status_code=200 if report.healthy else 503)
