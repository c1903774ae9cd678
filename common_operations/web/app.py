"""The Litestar application of the REST API."""

from __future__ import annotations

from litestar import Litestar
from litestar.datastructures import State
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import JsonRenderPlugin, SwaggerRenderPlugin, YamlRenderPlugin
from litestar.openapi.spec import Tag

from common_operations.bootstrap import Runtime
from common_operations.web.controllers.health import HealthController
from common_operations.web.controllers.settings import (
    PaymentSettingsController,
    PublicPaymentSettingsController,
)
from common_operations.web.controllers.tasks import TaskController
from common_operations.web.dependencies import dependencies
from common_operations.web.errors import exception_handlers
from common_operations.web.metrics import count_unmatched, metrics, metrics_middleware

API_VERSION = "1.0.0"


def openapi_config() -> OpenAPIConfig:
    """OpenAPI at ``/docs`` (Swagger UI), ``/docs/openapi.json`` and ``/docs/openapi.yaml``."""
    return OpenAPIConfig(
        title="Common Operations",
        version=API_VERSION,
        description=(
            "Long-running tasks of the e-commerce platform: create, watch, cancel, retry. "
            "Errors are RFC 9457 problem details (`application/problem+json`) with a stable `code`."
        ),
        path="/docs",
        render_plugins=[SwaggerRenderPlugin(path="/"), JsonRenderPlugin(), YamlRenderPlugin()],
        tags=[
            Tag(name="Tasks", description="Task lifecycle, progress, logs and events"),
            Tag(name="Health", description="Probes"),
            Tag(name="Settings", description="Payment settings (not implemented yet)"),
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
            HealthController,
            PaymentSettingsController,
            PublicPaymentSettingsController,
            metrics,
        ],
        dependencies=dependencies(runtime.tasks),
        exception_handlers=exception_handlers(),
        middleware=[metrics_middleware],
        before_send=[count_unmatched],
        openapi_config=openapi_config(),
        state=State({"runtime": runtime}),
        # Logging is configured once per process by the entry point, not by each app instance.
        logging_config=None,
        debug=False,
    )
