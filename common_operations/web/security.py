"""Browser-facing hardening of the REST API: security headers, CORS, and the internal-route guard.

- Every answer (routes, the router's own 404/405, problem details) carries the usual security
  headers, added by a ``before_send`` hook: route middleware never sees the router's answers.
- CORS is off unless ``http.cors_origins`` lists origins: then exactly those, never a wildcard.
- ``/metrics`` and ``/health/detailed`` show the process's internals (component states, request
  counts by route): :func:`internal_only` lets only principals with one of ``http.internal_roles``
  read them (an empty list leaves them open to whoever reaches the port, e.g. a separate metrics
  network).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Final

from litestar.config.cors import CORSConfig
from litestar.connection import ASGIConnection
from litestar.datastructures import MutableScopeHeaders
from litestar.handlers.base import BaseRouteHandler
from litestar.types import Message, Scope

from common_operations.config import HttpSettings, StorageSettings
from common_operations.domain.errors import PermissionDenied
from common_operations.domain.principal import Principal, require_credentials

DOCS_PATH: Final = "/docs"
API_PATH: Final = "/api/"

# API answers are JSON (or a file): nothing in them may run, load, or be framed.
API_CSP: Final = "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
# /docs (web/docs.py) and /console load their scripts and stylesheets from this origin only (the
# vendored Swagger UI and htmx under /console/static), with no inline script or style element;
# Swagger UI's icons are data: URIs, "Try it out" and the console's live progress (SSE) fetch this
# origin. Nothing on these pages echoes request input into a script.
DOCS_CSP: Final = (
    "default-src 'none'; "
    "script-src 'self'; "
    "style-src 'self'; "
    "img-src 'self' data:; "
    "connect-src 'self'; "
    "frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
)
CONSOLE_PATH: Final = "/console"


def console_csp(connect_origins: Sequence[str] = ()) -> str:
    """The console's policy: like /docs, plus its own forms, and uploads to ``connect_origins``.

    Args:
        connect_origins: origins the console's scripts may send an import's file to (an S3
            endpoint's presigned URLs); uploads to this service's own file endpoint are same-origin.
    """
    connect = " ".join(["'self'", *connect_origins])
    return (
        "default-src 'none'; "
        "script-src 'self'; "
        "style-src 'self'; "
        "img-src 'self' data:; "
        f"connect-src {connect}; "
        "frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
    )


def upload_origins(storage: StorageSettings) -> list[str]:
    """Where a browser PUTs an import's file besides this service: the S3 endpoint clients reach."""
    if storage.backend != "s3":
        return []
    s3 = storage.s3
    host = s3.public_endpoint or s3.endpoint
    if "://" in host:
        return [host.rstrip("/")]
    return [f"{'https' if s3.secure else 'http'}://{host}"]


HSTS: Final = "max-age=31536000"

_COMMON_HEADERS: Final = (
    ("x-content-type-options", "nosniff"),
    ("x-frame-options", "DENY"),
    ("referrer-policy", "no-referrer"),
    ("cross-origin-opener-policy", "same-origin"),
    ("cross-origin-resource-policy", "same-origin"),
)

# Headers a browser script may read from a cross-origin answer (CORS), beyond the safelisted ones.
EXPOSED_HEADERS: Final = ["Retry-After", "Location", "ETag", "WWW-Authenticate", "Content-Disposition"]


def tls_enabled(settings: HttpSettings) -> bool:
    """Whether the REST listener serves HTTPS (both a certificate and its key are configured)."""
    return settings.tls_cert_file is not None and settings.tls_key_file is not None


def security_headers(
    settings: HttpSettings, connect_origins: Sequence[str] = ()
) -> Callable[[Message, Scope], Awaitable[None]]:
    """A ``before_send`` hook adding the security headers to every HTTP answer.

    ``Strict-Transport-Security`` only over HTTPS (a browser ignores it on plain HTTP, and sending it
    from a TLS listener is what pins clients to TLS); ``Cache-Control: no-store`` on ``/api`` and
    ``/console`` answers that set no caching of their own (they carry task data, private to the
    caller). ``connect_origins``: see :func:`console_csp`.
    """
    hsts = tls_enabled(settings)
    console = console_csp(connect_origins)

    async def add_headers(message: Message, scope: Scope) -> None:
        if message["type"] != "http.response.start":
            return
        headers = MutableScopeHeaders.from_message(message)
        for name, value in _COMMON_HEADERS:
            headers[name] = value
        path = str(scope.get("path", ""))
        docs = path == DOCS_PATH or path.startswith(DOCS_PATH + "/")
        in_console = path == CONSOLE_PATH or path.startswith(CONSOLE_PATH + "/")
        headers["content-security-policy"] = console if in_console else DOCS_CSP if docs else API_CSP
        if hsts or scope.get("scheme") == "https":
            headers["strict-transport-security"] = HSTS
        private = path.startswith(API_PATH) or in_console
        if private and "cache-control" not in headers:
            headers["cache-control"] = "no-store"

    return add_headers


def cors_config(settings: HttpSettings) -> CORSConfig | None:
    """Litestar's CORS for the configured origins, or None (no CORS headers for any origin).

    Credentials travel in the ``Authorization`` and API key headers, never in cookies, so
    ``allow_credentials`` stays off and the listed origins need no cookie access.
    """
    if not settings.cors_origins:
        return None
    return CORSConfig(
        allow_origins=list(settings.cors_origins),
        allow_methods=["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"],
        allow_headers=["*"],
        allow_credentials=False,
        expose_headers=EXPOSED_HEADERS,
    )


def require_internal(principal: Principal, roles: Sequence[str]) -> None:
    """Refuse an internal view to a caller without one of ``roles`` (empty: anyone may read it).

    Raises:
        Unauthenticated: the caller sent no credentials (and the service is not in dev mode).
        PermissionDenied: the caller holds none of ``roles``.
    """
    if not roles:
        return
    require_credentials(principal)
    if not any(principal.has_role(role) for role in roles):
        raise PermissionDenied(f"this view needs one of the roles {', '.join(sorted(roles))}")


async def internal_only(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
    """Litestar guard of ``/metrics`` and ``/health/detailed``: :func:`require_internal`.

    The route is declared public (so the ``call`` dependency lets anonymous callers through when
    ``http.internal_roles`` is empty); the caller is resolved here by the app's authenticator.

    Raises:
        Unauthenticated: no or invalid credentials where roles are required.
        PermissionDenied: the caller holds none of the internal roles.
    """
    runtime = connection.app.state["runtime"]
    roles = runtime.settings.http.internal_roles
    if not roles:
        return
    principal = await runtime.auth.authenticate(connection.headers, public=True)
    require_internal(principal, roles)
