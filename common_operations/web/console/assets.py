"""Where the console's templates and static files live, and the router that serves the static files.

Everything the browser loads comes from this package (the vendored htmx and Swagger UI included,
see ``vendor_assets.sh``): no CDN and no build step, so the console and ``/docs`` work offline.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

from litestar.datastructures import CacheControlHeader
from litestar.router import Router
from litestar.static_files import create_static_files_router

PACKAGE_DIR: Final = Path(__file__).resolve().parent
TEMPLATES_DIR: Final = PACKAGE_DIR / "templates"
STATIC_DIR: Final = PACKAGE_DIR / "static"
STATIC_PATH: Final = "/console/static"


def static_router() -> Router:
    """The console's and ``/docs``' static files under ``/console/static`` (not in the OpenAPI)."""
    return create_static_files_router(
        path=STATIC_PATH,
        directories=[STATIC_DIR],
        include_in_schema=False,
        # Revalidated on every use (Litestar answers ETag / Last-Modified, so mostly a 304): a
        # deploy's new console.js is picked up at once, without versioned file names.
        cache_control=CacheControlHeader(no_cache=True),
        name="console-static",
    )
