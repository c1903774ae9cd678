"""Swagger UI for ``/docs`` served entirely from this package: no CDN, no inline script.

Litestar's :class:`~litestar.openapi.plugins.SwaggerRenderPlugin` loads Swagger UI from jsDelivr and
starts it with an inline ``<script>`` holding the whole schema. On a machine without internet (or
an internal network) that page renders blank, and the inline script forces ``'unsafe-inline'`` into
the page's Content-Security-Policy. This page links the vendored ``swagger-ui-dist`` files (see
``web/console/vendor_assets.sh``) and a small start script, all under ``/console/static``, and the
start script fetches ``/docs/openapi.json`` itself, so ``/docs`` runs with ``script-src 'self'``.
"""

from __future__ import annotations

from html import escape
from typing import Any, Final

from litestar import Request
from litestar.openapi.plugins import SwaggerRenderPlugin
from litestar.router import Router

from common_operations.web.console.assets import STATIC_PATH

SWAGGER_ASSETS: Final = f"{STATIC_PATH}/vendor/swagger-ui"
SWAGGER_START: Final = f"{STATIC_PATH}/docs.js"


class OfflineSwaggerRenderPlugin(SwaggerRenderPlugin):
    """Swagger UI from the package's own static files, started by an external script."""

    def __init__(self, *, path: str = "/", spec_path: str = "openapi.json") -> None:
        """A Swagger UI page at ``path`` under the OpenAPI path, reading the schema at ``spec_path``.

        Args:
            path: where the page is served, relative to the OpenAPI config's path.
            spec_path: the JSON schema's path relative to the OpenAPI config's path (the
                :class:`~litestar.openapi.plugins.JsonRenderPlugin` serves ``openapi.json``).
        """
        super().__init__(
            js_url=f"{SWAGGER_ASSETS}/swagger-ui-bundle.js",
            css_url=f"{SWAGGER_ASSETS}/swagger-ui.css",
            standalone_preset_js_url=f"{SWAGGER_ASSETS}/swagger-ui-standalone-preset.js",
            path=path,
            # An empty favicon: the base class's default links one on jsDelivr.
            favicon="",
        )
        self.spec_path = spec_path

    def render(self, request: Request[Any, Any, Any], openapi_schema: dict[str, Any]) -> bytes:
        """The HTML page: stylesheet, the two bundles, and the start script; no inline code.

        Args:
            request: the request for the page (its OpenAPI path locates the JSON schema).
            openapi_schema: the schema; only its title is used (the browser fetches the schema).

        Returns:
            The page as UTF-8 bytes.
        """
        config = request.app.openapi_config
        docs_root = (config.path if config else None) or "/docs"
        spec_url = f"{docs_root.rstrip('/')}/{self.spec_path}"
        title = escape(str(openapi_schema.get("info", {}).get("title", "API")))
        page = f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<link rel="stylesheet" href="{escape(self.css_url)}">
<script src="{escape(self.js_url)}"></script>
<script src="{escape(self.standalone_preset_js_url)}"></script>
<script src="{SWAGGER_START}" defer></script>
</head>
<body>
<div id="swagger-container" data-spec-url="{escape(spec_url)}"></div>
</body>
</html>
"""
        return page.encode()

    def receive_router(self, router: Router) -> None:
        """Register no OAuth2 redirect page: the API's credentials are bearer tokens and API keys.

        The base class adds ``oauth2-redirect.html`` (an inline script) for OAuth2 flows in the
        browser, which this API does not offer.
        """
