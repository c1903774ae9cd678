"""Per-request log context of the REST API: the task a request is about, and nothing left behind.

Route middleware (it runs once the route is resolved, so the path parameters are known): every log
line written while the request is handled carries ``task_id`` when the path names a task (``{id}``
or ``{taskId}``), and the ``principal`` the authentication step binds. Whatever the request bound
is undone when it ends, also when requests share a task (an in-process test client).
"""

from __future__ import annotations

from litestar.types import ASGIApp, Receive, Scope, Send

from common_operations.infra.logs import log_context

# Path parameters that hold a task id (the seed's names: {id} on a task's own routes, {taskId} else).
_TASK_ID_PARAMS = ("taskId", "id")


def log_context_middleware(app: ASGIApp) -> ASGIApp:
    """Wrap a route's ASGI app so its log lines carry the request's task id (and principal)."""

    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        params = scope.get("path_params") or {}
        task_id = next((str(params[p]) for p in _TASK_ID_PARAMS if params.get(p)), None)
        # Only the first 64 characters: a path parameter is the caller's text, not yet validated.
        with log_context(task_id=task_id[:64] if task_id else None):
            await app(scope, receive, send)

    return middleware
