"""Browser tests: the REST app on a live uvicorn, driven by headless Chromium through Playwright.

The server runs in the test's own event loop (the runtime's asyncpg pool and Temporal client belong
to it), so the tests use Playwright's async API; pytest-playwright's fixtures are synchronous and
would need the app in another thread and loop. Chromium is Debian's (``/usr/bin/chromium``, or
``CHROMIUM_PATH``): nothing is downloaded at test time, and without it these tests are skipped with
the reason (``.ci/run`` installs it first, so CI runs them).

Every page blocks and records any request that is not to the test server: the console and
``/docs`` must work with the network cut off, and a test fails if one was even attempted.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from playwright.async_api import Browser, Page, Route, async_playwright
from temporalio.worker import Worker

from common_operations.bootstrap import Runtime
from common_operations.web.server import serve_http

CHROMIUM = os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
# CO_UPDATE_DOCS_SCREENSHOT=1: the console screenshot is also written to docs/console.png (README).
DOCS_SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "console.png"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture
async def live_url(runtime: Runtime, worker: Worker) -> AsyncIterator[str]:
    """The REST app (console included) served by uvicorn on a free loopback port, with the worker."""
    port = _free_port()
    server = asyncio.ensure_future(serve_http(runtime, "127.0.0.1", port))
    url = f"http://127.0.0.1:{port}"
    async with httpx.AsyncClient(base_url=url) as probe:
        for _ in range(200):
            if server.done():
                server.result()  # raises the reason it could not start
            with contextlib.suppress(httpx.TransportError):
                if (await probe.get("/health/live")).status_code == 200:
                    break
            await asyncio.sleep(0.05)
        else:
            pytest.fail("the live server did not start")
    try:
        yield url
    finally:
        server.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await server


@pytest.fixture
async def http(live_url: str) -> AsyncIterator[httpx.AsyncClient]:
    """An API client of the live server (dev mode: no credentials = the local admin)."""
    async with httpx.AsyncClient(base_url=live_url, timeout=30) as client:
        yield client


@pytest.fixture(scope="session")
async def browser() -> AsyncIterator[Browser]:
    """Headless Debian Chromium for the session (skipped, with the reason, when it is missing)."""
    if not os.access(CHROMIUM, os.X_OK):
        pytest.skip(f"Chromium not found at {CHROMIUM} (apt-get install chromium); browser tests skipped")
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            yield browser
        finally:
            await browser.close()


@dataclass
class Tab:
    """A page of its own browser context, with what it tried to reach and what it complained about."""

    page: Page
    base: str
    external: list[str] = field(default_factory=list)
    console_errors: list[str] = field(default_factory=list)
    responses: list[tuple[str, int]] = field(default_factory=list)

    async def shot(self, name: str) -> Path:
        """A full-page screenshot under tests/artifacts/ (git-ignored)."""
        ARTIFACTS.mkdir(exist_ok=True)
        path = ARTIFACTS / f"{name}.png"
        await self.page.screenshot(path=str(path), full_page=True)
        return path


@pytest.fixture
async def tab(browser: Browser, live_url: str) -> AsyncIterator[Tab]:
    """A fresh browser context and page on the live server; every other origin is cut off."""
    context = await browser.new_context(viewport={"width": 1360, "height": 900})
    page = await context.new_page()
    tab = Tab(page=page, base=live_url)

    async def block(route: Route) -> None:
        url = route.request.url
        if url.startswith(live_url + "/") or url == live_url:
            await route.continue_()
        else:
            tab.external.append(url)
            await route.abort()

    await page.route("**/*", block)
    page.on("console", lambda m: tab.console_errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: tab.console_errors.append(f"page error: {e}"))
    page.on("response", lambda r: tab.responses.append((r.url, r.status)))
    # hx-confirm (Delete) asks through window.confirm: accept, as an operator would.
    page.on("dialog", lambda d: asyncio.ensure_future(d.accept()))
    try:
        yield tab
    finally:
        await context.close()
    assert tab.external == [], f"the page tried to reach other origins: {tab.external}"
