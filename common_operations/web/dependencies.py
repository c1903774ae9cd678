"""The one dependency every handler takes: who calls, and the service layer.

The principal is resolved here and nowhere else (by :class:`Authenticator`); a handler marked
``opt={"public": True}`` also serves callers without credentials (as the anonymous principal). It
is a single
dependency on purpose: Litestar resolves sibling dependencies concurrently in an anyio task group,
which cost about 12 % of a GET's CPU for two trivial values.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from litestar import Request
from litestar.di import NamedDependency, Provide
from litestar.params import SkipValidation

from common_operations.domain.principal import Principal
from common_operations.services.identity import Authenticator
from common_operations.services.messages import MessagesService
from common_operations.services.settings import SettingsService
from common_operations.services.tasks import TaskService
from common_operations.web.console.auth import with_console_credential


@dataclass(frozen=True, slots=True)
class CallContext:
    """The caller of a request and the service it calls."""

    principal: Principal
    tasks: TaskService
    # The settings groups and the messages catalogue (None in apps built without them).
    settings: SettingsService | None = None
    messages: MessagesService | None = None


# Handlers annotate with this: the injected object is ours, so Litestar need not re-validate it on
# every request (its default for dependencies of arbitrary types).
Call = NamedDependency[SkipValidation[CallContext]]


PUBLIC = {"public": True}


def dependencies(
    tasks: TaskService,
    auth: Authenticator,
    *,
    settings: SettingsService | None = None,
    messages: MessagesService | None = None,
) -> dict[str, Provide]:
    """The app-wide dependency ``call``, built per request from the request's credentials."""
    api_key_header = auth.settings.api_key_header.lower()

    async def provide_call(request: Request[Any, Any, Any]) -> CallContext:
        public = bool(request.route_handler.opt.get("public"))
        # The console's session cookie stands for its header when the request sends none (the
        # browser's EventSource cannot set headers); see web/console/auth.py.
        headers = with_console_credential(request.headers, request.cookies, api_key_header)
        principal = await auth.authenticate(headers, public=public)
        return CallContext(principal, tasks, settings, messages)

    return {"call": Provide(provide_call)}
