"""The Litestar application of the REST API."""

from __future__ import annotations

from typing import Any

from litestar import Litestar, Request
from litestar.datastructures import State
from litestar.exceptions import ClientException
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import JsonRenderPlugin, YamlRenderPlugin
from litestar.openapi.spec import Tag

from common_operations.bootstrap import Runtime
from common_operations.domain import task as limits
from common_operations.infra import telemetry
from common_operations.web.console.assets import static_router
from common_operations.web.console.controller import ConsoleController
from common_operations.web.controllers.admin import AdminController
from common_operations.web.controllers.api_keys import ApiKeysController
from common_operations.web.controllers.bulk_actions import BulkActionController
from common_operations.web.controllers.files import FileController
from common_operations.web.controllers.health import HealthController
from common_operations.web.controllers.messages import MessagesController
from common_operations.web.controllers.settings import (
    PaymentSettingsController,
    PublicPaymentSettingsController,
    SettingsController,
)
from common_operations.web.controllers.stream import TaskStreamController
from common_operations.web.controllers.tasks import TaskController
from common_operations.web.dependencies import dependencies
from common_operations.web.docs import OfflineSwaggerRenderPlugin
from common_operations.web.errors import exception_handlers
from common_operations.web.log_context import log_context_middleware
from common_operations.web.metrics import count_unmatched, metrics, metrics_middleware
from common_operations.web.security import cors_config, security_headers, upload_origins

API_VERSION = "1.0.0"
# Explicit rather than Litestar's 10 MB default: the largest valid body (a CreateTask with 64 KiB of
# params, or a progress report) is far smaller, and a larger one is answered 413 before it is read.
MAX_REQUEST_BODY_BYTES = 1024 * 1024

LIMITS_DOC = (
    f"**Limits.** Request bodies up to {MAX_REQUEST_BODY_BYTES // 1024} KiB (larger: 413 "
    f"`PAYLOAD_TOO_LARGE`). Text: `taskType` and `entityType` up to {limits.MAX_TASK_TYPE_LENGTH} "
    f"characters, `requestedBy` {limits.MAX_REQUESTED_BY_LENGTH}, `fileName` {limits.MAX_FILE_NAME_LENGTH}, "
    f"`search` {limits.MAX_SEARCH_LENGTH}, `errorMessage` and `message` {limits.MAX_ERROR_LENGTH}; no NUL "
    f"characters. `params`: at most {limits.MAX_PARAMS_BYTES // 1024} KiB as compact UTF-8 JSON (larger: "
    f"413 `PAYLOAD_TOO_LARGE`) and {limits.MAX_PARAMS_DEPTH} levels deep (the object itself is level 1). "
    "Instants are RFC 3339 with a time zone, within 0001-01-01T00:00:00Z to 9999-12-31T23:59:59Z. "
    f"`page` up to {limits.MAX_PAGE}, `pageSize` 1 to {limits.MAX_PAGE_SIZE} (larger list pages are capped). "
    "Anything else out of range is a 400 `VALIDATION_FAILED` naming the field. "
    "429 `RATE_LIMITED` carries `Retry-After` (whole seconds)."
)


class _Request(Request[Any, Any, Any]):
    """Litestar's request, answering 400 for a JSON body nested beyond the decoder's recursion limit."""

    async def json(self) -> Any:
        """The decoded JSON body.

        Raises:
            ClientException: the body nests arrays or objects deeper than the decoder can follow
                (msgspec recurses per level and raises ``RecursionError``, which would be a 500).
        """
        try:
            return await super().json()
        except RecursionError as exc:
            raise ClientException("the request body is nested too deeply to decode") from exc


def openapi_config() -> OpenAPIConfig:
    """OpenAPI at ``/docs`` (Swagger UI), ``/docs/openapi.json`` and ``/docs/openapi.yaml``."""
    return OpenAPIConfig(
        title="Common Operations",
        version=API_VERSION,
        description=(
            "Long-running tasks of the e-commerce platform: create, watch, cancel, retry. "
            "Errors are RFC 9457 problem details (`application/problem+json`) with a stable `code`.\n\n"
            + LIMITS_DOC
        ),
        path="/docs",
        # Swagger UI from the package (no CDN): /docs renders without internet (web/docs.py).
        render_plugins=[OfflineSwaggerRenderPlugin(path="/"), JsonRenderPlugin(), YamlRenderPlugin()],
        tags=[
            Tag(name="Tasks", description="Task lifecycle, progress, logs and events"),
            Tag(name="Health", description="Probes"),
            Tag(name="Settings", description="Settings groups (payment first): admin and public views"),
            Tag(name="Messages", description="The i18n message templates and their rendering"),
            Tag(name="Admin", description="API keys and the audit log (admin role)"),
        ],
        use_handler_docstrings=True,
    )


def create_app(runtime: Runtime) -> Litestar:
    """Build the REST application on a connected runtime.

    The runtime's lifetime is the caller's (the CLI or a test fixture opens and closes it), so the app
    has no lifespan of its own. The runtime is kept in ``app.state.runtime`` for extensions.

    Args:
        runtime: connected clients and services.

    Returns:
        The ASGI application.
    """
    return Litestar(
        route_handlers=[
            TaskController,
            TaskStreamController,
            BulkActionController,
            FileController,
            HealthController,
            PaymentSettingsController,
            PublicPaymentSettingsController,
            SettingsController,
            MessagesController,
            ApiKeysController,
            AdminController,
            metrics,
            # The operator console and the static files of it and /docs (not in the OpenAPI).
            ConsoleController,
            static_router(),
        ],
        dependencies=dependencies(
            runtime.tasks, runtime.auth, settings=runtime.settings_groups, messages=runtime.messages
        ),
        exception_handlers=exception_handlers(),
        # log_context: the request's task id and principal on its log lines (web.log_context).
        # telemetry: with tracing on, a server span per request continuing an incoming traceparent.
        middleware=[*telemetry.litestar_middleware(), metrics_middleware, log_context_middleware],
        before_send=[
            count_unmatched,
            security_headers(runtime.settings.http, upload_origins(runtime.settings.storage)),
        ],
        cors_config=cors_config(runtime.settings.http),
        # http.docs false: no OpenAPI document and no Swagger UI (/docs answers 404).
        openapi_config=openapi_config() if runtime.settings.http.docs else None,
        state=State({"runtime": runtime}),
        request_max_body_size=MAX_REQUEST_BODY_BYTES,
        request_class=_Request,
        # Logging is configured once per process by the entry point, not by each app instance.
        logging_config=None,
        debug=False,
    )
