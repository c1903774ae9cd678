"""Dependencies shared by the controllers: the caller and the service layer.

The principal is resolved here and nowhere else, so real authentication (token verification,
mTLS, …) replaces :func:`provide_principal` without touching a handler.
"""

from __future__ import annotations

from typing import Any

from litestar import Request
from litestar.di import NamedDependency, Provide
from litestar.params import SkipValidation

from common_operations.domain.principal import Principal
from common_operations.services.identity import principal_from_headers
from common_operations.services.tasks import TaskService

# Handlers annotate with these: the injected objects are ours, so Litestar need not re-validate
# them on every request (its default for dependencies of arbitrary types).
Caller = NamedDependency[SkipValidation[Principal]]
Tasks = NamedDependency[SkipValidation[TaskService]]


async def provide_principal(request: Request[Any, Any, Any]) -> Principal:
    """The caller of this request, from the gateway's trusted headers."""
    return principal_from_headers(request.headers)


def dependencies(tasks: TaskService) -> dict[str, Provide]:
    """The app-wide dependencies: ``principal`` per request, ``tasks`` (the service) once."""

    def provide_tasks() -> TaskService:
        return tasks

    return {
        "principal": Provide(provide_principal),
        "tasks": Provide(provide_tasks, use_cache=True, sync_to_thread=False),
    }
